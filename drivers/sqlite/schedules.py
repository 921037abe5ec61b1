"""The SQLite driver's schedules: one row per schedule, each call one ``BEGIN IMMEDIATE``.

The write lock of the call serialises every process's callers, so reading a
schedule's cursor, enqueueing its due ticks (through the driver's keyed
insert) and moving the cursor happen as one step: two workers never make
two jobs for one tick.  The rules come from :mod:`taskharbor.spec.schedules`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace

from taskharbor.spec.errors import InvalidRequest
from taskharbor.spec.records import EnqueueRequest, EnqueueResult, JobRecord
from taskharbor.spec.schedules import (
    Schedule,
    ScheduleNotFound,
    ScheduleRecord,
    TickPlan,
    TickResult,
    check_schedule_name,
    check_schedules,
    earliest_tick,
    idle,
    plan_ticks,
    resumed,
    run_request,
    schedule_from_json,
    schedule_names,
    schedule_to_json,
    synced,
)
from taskharbor.spec.table import FINISHED_JOB_STATES

from .rows import from_micros, to_micros
from .writes import Writes

MIGRATION = (
    """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        paused INTEGER NOT NULL,
        cursor INTEGER NOT NULL,
        last_job_id INTEGER
    )
    """,
)
"""Schema step that adds the schedules table (see ``schema.MIGRATIONS``)."""

_COLUMNS = "name, definition, paused, cursor, last_job_id"
_FINISHED = frozenset(state.value for state in FINISHED_JOB_STATES)


def _record(row: sqlite3.Row) -> ScheduleRecord:
    return ScheduleRecord(
        schedule_from_json(row[0], row[1]),
        paused=bool(row[2]),
        cursor=from_micros(row[3]),
        last_job_id=row[4],
    )


def _store(tx: Writes, record: ScheduleRecord) -> None:
    tx.conn.execute(
        f"INSERT OR REPLACE INTO schedules ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
        (
            record.name,
            schedule_to_json(record.schedule),
            int(record.paused),
            to_micros(record.cursor),
            record.last_job_id,
        ),
    )


def _records(tx: Writes, names: Sequence[str]) -> list[ScheduleRecord]:
    """The named records, in order; ``ScheduleNotFound`` for the first missing one."""
    rows = tx.conn.execute(
        f"SELECT {_COLUMNS} FROM schedules WHERE name IN (SELECT value FROM json_each(?))",
        (json.dumps(list(names)),),
    ).fetchall()
    found = {row[0]: row for row in rows}
    for name in names:
        if name not in found:
            raise ScheduleNotFound(name)
    return [_record(found[name]) for name in names]


def _plans(tx: Writes, records: Sequence[ScheduleRecord]) -> list[TickPlan]:
    return [plan_ticks(r, tx.now, _unfinished(tx, r)) for r in records]


class SQLiteSchedules:
    """The ``schedules`` calls of :class:`~taskharbor.drivers.sqlite.SQLiteDriver`."""

    _transaction: Callable[..., AbstractContextManager[Writes]]
    _insert: Callable[[Writes, EnqueueRequest], EnqueueResult]

    def sync_schedules(self, schedules: Sequence[Schedule]) -> list[ScheduleRecord]:
        declared = check_schedules(schedules, "sync_schedules")
        with self._transaction() as tx:
            records = []
            for schedule in declared:
                row = tx.conn.execute(
                    f"SELECT {_COLUMNS} FROM schedules WHERE name = ?", (schedule.name,)
                ).fetchone()
                record = synced(None if row is None else _record(row), schedule, tx.now)
                _store(tx, record)
                records.append(record)
            return records

    def enqueue_due_ticks(self, names: Sequence[str]) -> TickResult:
        wanted = schedule_names(names, "enqueue_due_ticks")
        # A first look in a read transaction: most calls (every worker, every pass)
        # find nothing due and never take the write lock.
        with self._transaction(write=False) as tx:
            records = _records(tx, wanted)
            if idle(records, _plans(tx, records)):
                return TickResult((), earliest_tick(records))
        # not durable: like the worker's other calls, a crash may lose the
        # last commits, and the next call then makes the same ticks again
        with self._transaction(durable=False) as tx:
            records = _records(tx, wanted)
            created: list[JobRecord] = []
            after = []
            for record, plan in zip(records, _plans(tx, records), strict=True):
                last_job_id = record.last_job_id
                for request in plan.requests:
                    outcome = self._insert(tx, request)
                    last_job_id = outcome.job.id
                    if outcome.created:
                        created.append(outcome.job)
                after.append(replace(record, cursor=plan.cursor, last_job_id=last_job_id))
            tx.conn.executemany(
                "UPDATE schedules SET cursor = ?, last_job_id = ? WHERE name = ?",
                [
                    (to_micros(new.cursor), new.last_job_id, new.name)
                    for new, old in zip(after, records, strict=True)
                    if new != old
                ],
            )
            return TickResult(tuple(created), earliest_tick(after))

    def list_schedules(self) -> list[ScheduleRecord]:
        with self._transaction(write=False) as tx:
            rows = tx.conn.execute(f"SELECT {_COLUMNS} FROM schedules ORDER BY name").fetchall()
            return [_record(row) for row in rows]

    def pause_schedules(self, names: Sequence[str], paused: bool) -> list[ScheduleRecord]:
        wanted = schedule_names(names, "pause_schedules")
        if not isinstance(paused, bool):
            raise InvalidRequest(f"pause_schedules: paused must be a bool, not {paused!r}")
        with self._transaction() as tx:
            records = [resumed(record, paused, tx.now) for record in _records(tx, wanted)]
            for record in records:
                _store(tx, record)
            return records

    def run_schedule(self, name: str) -> JobRecord:
        check_schedule_name(name)
        with self._transaction() as tx:
            (record,) = _records(tx, [name])
            job = self._insert(tx, run_request(record.schedule, tx.now)).job
            _store(tx, replace(record, last_job_id=job.id))
            return job

    def drop_schedules(self, names: Sequence[str]) -> None:
        wanted = schedule_names(names, "drop_schedules")
        with self._transaction() as tx:
            _records(tx, wanted)
            tx.conn.executemany("DELETE FROM schedules WHERE name = ?", [(n,) for n in wanted])


def _unfinished(tx: Writes, record: ScheduleRecord) -> bool:
    """Whether the record's last job is stored and not finished (asked only when it matters)."""
    if record.last_job_id is None or not record.schedule.skip_if_running:
        return False
    row = tx.conn.execute("SELECT state FROM jobs WHERE id = ?", (record.last_job_id,)).fetchone()
    return row is not None and row[0] not in _FINISHED
