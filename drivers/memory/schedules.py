"""The memory driver's schedules: records in a dict, each call under the driver's one lock.

Every rule comes from :mod:`taskharbor.spec.schedules`; a call checks every
name before it changes anything, so one that raises leaves the store as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from taskharbor.spec.errors import InvalidRequest
from taskharbor.spec.records import EnqueueRequest, JobId, JobRecord
from taskharbor.spec.schedules import (
    Schedule,
    ScheduleNotFound,
    ScheduleRecord,
    TickResult,
    check_schedule_name,
    check_schedules,
    earliest_tick,
    plan_ticks,
    resumed,
    run_request,
    schedule_names,
    synced,
)
from taskharbor.spec.table import FINISHED_JOB_STATES

from .rows import JobRow


class MemorySchedules:
    """The ``schedules`` calls of :class:`~taskharbor.drivers.memory.MemoryDriver`."""

    _lock: threading.Lock
    _jobs: dict[JobId, JobRow]
    _keys: dict[str, JobId]
    _schedules: dict[str, ScheduleRecord]
    _now: Callable[[], datetime]
    _store_job: Callable[[EnqueueRequest, datetime], JobRow]
    _key_holder: Callable[[str | None, datetime], JobRow | None]

    def _records(self, names: Sequence[str]) -> list[ScheduleRecord]:
        for name in names:
            if name not in self._schedules:
                raise ScheduleNotFound(name)
        return [self._schedules[name] for name in names]

    def _keyed(self, request: EnqueueRequest, now: datetime) -> tuple[JobRow, bool]:
        """The job holding the request's key, else a new one (and True)."""
        assert request.idempotency_key is not None
        holder = self._key_holder(request.idempotency_key, now)
        if holder is not None:
            return holder, False
        return self._store_job(request, now), True

    def sync_schedules(self, schedules: Sequence[Schedule]) -> list[ScheduleRecord]:
        declared = check_schedules(schedules, "sync_schedules")
        with self._lock:
            now = self._now()
            for schedule in declared:
                stored = self._schedules.get(schedule.name)
                self._schedules[schedule.name] = synced(stored, schedule, now)
            return [self._schedules[schedule.name] for schedule in declared]

    def enqueue_due_ticks(self, names: Sequence[str]) -> TickResult:
        wanted = schedule_names(names, "enqueue_due_ticks")
        with self._lock:
            now = self._now()
            created: list[JobRow] = []
            for record in self._records(wanted):
                last = None
                if record.schedule.skip_if_running and record.last_job_id is not None:
                    last = self._jobs.get(record.last_job_id)
                unfinished = last is not None and last.state not in FINISHED_JOB_STATES
                plan = plan_ticks(record, now, unfinished)
                last_job_id = record.last_job_id
                for request in plan.requests:
                    row, new = self._keyed(request, now)
                    last_job_id = row.id
                    if new:
                        created.append(row)
                if plan.requests or plan.cursor != record.cursor:
                    self._schedules[record.name] = replace(
                        record, cursor=plan.cursor, last_job_id=last_job_id
                    )
            next_tick = earliest_tick([self._schedules[name] for name in wanted])
            return TickResult(tuple(row.snapshot() for row in created), next_tick)

    def list_schedules(self) -> list[ScheduleRecord]:
        with self._lock:
            return [self._schedules[name] for name in sorted(self._schedules)]

    def pause_schedules(self, names: Sequence[str], paused: bool) -> list[ScheduleRecord]:
        wanted = schedule_names(names, "pause_schedules")
        if not isinstance(paused, bool):
            raise InvalidRequest(f"pause_schedules: paused must be a bool, not {paused!r}")
        with self._lock:
            now = self._now()
            for record in self._records(wanted):
                self._schedules[record.name] = resumed(record, paused, now)
            return [self._schedules[name] for name in wanted]

    def run_schedule(self, name: str) -> JobRecord:
        check_schedule_name(name)
        with self._lock:
            now = self._now()
            (record,) = self._records([name])
            row, _ = self._keyed(run_request(record.schedule, now), now)
            self._schedules[name] = replace(record, last_job_id=row.id)
            return row.snapshot()

    def drop_schedules(self, names: Sequence[str]) -> None:
        wanted = schedule_names(names, "drop_schedules")
        with self._lock:
            self._records(wanted)
            for name in wanted:
                del self._schedules[name]
