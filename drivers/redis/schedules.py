"""The Redis driver's schedules (capability ``schedules``).

The rules are Python (:mod:`taskharbor.spec.schedules`: cron parsing, time
zones, missed ticks), so a call reads the records and the call's now in one
script run, plans in Python, and writes in a second run that first checks
that nothing it read has changed: each record's version, and whether its last
job is still unfinished.  A change (another worker handled the same ticks)
refuses the whole write, and the call reads and plans again; the loser of a
race then finds nothing due.  Reads that find nothing to do never write.

Each schedule is a hash ``P s:<name>`` (``def``: the declaration as
:func:`~taskharbor.spec.schedules.schedule_to_json` writes it, ``paused``,
``cursor``, ``last``, ``v``: the version), its name in the sorted set
``P schedules``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from taskharbor.spec.errors import InvalidRequest
from taskharbor.spec.records import EnqueueRequest, JobRecord
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

from .rows import as_dict, decode_job, decode_time, encode_time, request_fields

SCHEDULES_LUA = r"""
function H.schedule_last_state(last)
  if not last or last == '' then return '' end
  return redis.call('HGET', P .. 'j:' .. last, 'state') or ''
end

CMD.sched_read = function(a)
  local out = {NOW}
  for _, name in ipairs(a) do
    local f = redis.call('HMGET', P .. 's:' .. name, 'def', 'paused', 'cursor', 'last', 'v')
    out[#out + 1] = {f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or '',
      H.schedule_last_state(f[4])}
  end
  return out
end

-- Per schedule: name, the version and last job state read, the new def, paused and
-- cursor, how many jobs, then REQUEST_FIELDS per job (keyed: a held key makes none).
CMD.sched_write = function(a)
  local items, i = {}, 2
  for s = 1, tonumber(a[1]) do
    local key = P .. 's:' .. a[i]
    local f = redis.call('HMGET', key, 'v', 'last')
    if (f[1] or '') ~= a[i + 1] or H.schedule_last_state(f[2]) ~= a[i + 2] then
      return {'!', 'conflict'}
    end
    items[s] = {key = key, name = a[i], def = a[i + 3], paused = a[i + 4], cursor = a[i + 5],
      base = i + 6, count = tonumber(a[i + 6]), last = f[2] or ''}
    i = i + 7 + items[s].count * REQUEST_FIELDS
  end
  local out = {}
  for _, it in ipairs(items) do
    local last, created = it.last, {}
    for r = 0, it.count - 1 do
      local b = it.base + r * REQUEST_FIELDS
      local holder = H.key_holder(a[b + 8])
      if holder then
        last = holder.id
      else
        local j = H.new_job(a, b, nil, {}, nil)
        last = j.id
        created[#created + 1] = H.flat(j)
      end
    end
    redis.call('HSET', it.key, 'def', it.def, 'paused', it.paused, 'cursor', it.cursor,
      'last', last)
    redis.call('HINCRBY', it.key, 'v', 1)
    redis.call('ZADD', P .. 'schedules', 0, it.name)
    out[#out + 1] = {last, created}
  end
  return out
end

CMD.sched_list = function(a)
  local out = {}
  for _, name in ipairs(redis.call('ZRANGE', P .. 'schedules', 0, -1)) do
    local f = redis.call('HMGET', P .. 's:' .. name, 'def', 'paused', 'cursor', 'last')
    out[#out + 1] = {name, f[1], f[2], f[3], f[4] or ''}
  end
  return out
end

CMD.sched_drop = function(a)
  for _, name in ipairs(a) do
    if redis.call('EXISTS', P .. 's:' .. name) == 0 then
      return {'!', 'schedule_not_found', name}
    end
  end
  for _, name in ipairs(a) do
    redis.call('DEL', P .. 's:' .. name)
    redis.call('ZREM', P .. 'schedules', name)
  end
  return 1
end
"""


@dataclass(frozen=True, slots=True)
class _Read:
    """A schedule as one read found it: the record (None when not stored), its
    version and whether its last job was unfinished (the write checks both)."""

    name: str
    record: ScheduleRecord | None
    version: str
    last_state: str

    @property
    def previous_unfinished(self) -> bool:
        return self.last_state != "" and self.last_state not in FINISHED_JOB_STATES


class ScheduleConflict(Exception):
    """Another caller changed a schedule between this call's read and its write (the
    call reads and plans again; never raised to the driver's caller)."""


def _record(name: str, definition: str, paused: str, cursor: str, last: str) -> ScheduleRecord:
    return ScheduleRecord(
        schedule_from_json(name, definition),
        paused=paused == "1",
        cursor=decode_time(cursor),
        last_job_id=int(last) if last else None,
    )


class RedisSchedules:
    """The ``schedules`` calls of :class:`~taskharbor.drivers.redis.RedisDriver`."""

    _call: Callable[..., Any]

    def _read(self, names: Sequence[str]) -> tuple[str, list[_Read]]:
        now, *rows = self._call("sched_read", *names)
        reads = []
        for name, (definition, paused, cursor, last, version, state) in zip(
            names, rows, strict=True
        ):
            record = _record(name, definition, paused, cursor, last) if definition else None
            reads.append(_Read(name, record, version, state))
        return now, reads

    def _write(
        self, now: str, changes: Sequence[tuple[_Read, ScheduleRecord, Sequence[EnqueueRequest]]]
    ) -> list[tuple[int | None, list[JobRecord]]]:
        """Store the new records and their keyed jobs at ``now``, if nothing read changed."""
        args: list[str] = [str(len(changes))]
        for read, record, requests in changes:
            args += [read.name, read.version, read.last_state]
            args += [schedule_to_json(record.schedule), "1" if record.paused else "0"]
            args += [encode_time(record.cursor), str(len(requests))]
            for request in requests:
                args += request_fields(request)
        reply = self._call("sched_write", *args, now=now)
        return [
            (int(last) if last else None, [decode_job(as_dict(flat)) for flat in created])
            for last, created in reply
        ]

    def _retrying(self, attempt: Callable[[], Any]) -> Any:
        while True:
            try:
                return attempt()
            except ScheduleConflict:
                continue

    def sync_schedules(self, schedules: Sequence[Schedule]) -> list[ScheduleRecord]:
        declared = check_schedules(schedules, "sync_schedules")

        def attempt() -> list[ScheduleRecord]:
            now, reads = self._read([schedule.name for schedule in declared])
            moment = decode_time(now)
            records = [
                synced(read.record, schedule, moment)
                for read, schedule in zip(reads, declared, strict=True)
            ]
            self._write(
                now, [(read, record, ()) for read, record in zip(reads, records, strict=True)]
            )
            return records

        result: list[ScheduleRecord] = self._retrying(attempt)
        return result

    def _stored(self, names: Sequence[str]) -> tuple[str, list[_Read], list[ScheduleRecord]]:
        now, reads = self._read(names)
        records = []
        for read in reads:
            if read.record is None:
                raise ScheduleNotFound(read.name)
            records.append(read.record)
        return now, reads, records

    def enqueue_due_ticks(self, names: Sequence[str]) -> TickResult:
        wanted = schedule_names(names, "enqueue_due_ticks")

        def attempt() -> TickResult:
            now, reads, records = self._stored(wanted)
            moment = decode_time(now)
            plans: list[TickPlan] = [
                plan_ticks(record, moment, read.previous_unfinished)
                for read, record in zip(reads, records, strict=True)
            ]
            if idle(records, plans):
                return TickResult((), earliest_tick(records))
            changes = [
                (read, replace(record, cursor=plan.cursor), plan.requests)
                for read, record, plan in zip(reads, records, plans, strict=True)
                if plan.requests or plan.cursor != record.cursor
            ]
            written = self._write(now, changes)
            after = {read.name: record for read, record, _ in changes}
            created: list[JobRecord] = []
            for (read, record, requests), (last, jobs) in zip(changes, written, strict=True):
                if requests:
                    after[read.name] = replace(record, last_job_id=last)
                created += jobs
            return TickResult(
                tuple(created), earliest_tick([after.get(r.name, r) for r in records])
            )

        result: TickResult = self._retrying(attempt)
        return result

    def list_schedules(self) -> list[ScheduleRecord]:
        rows = self._call("sched_list")
        records = [_record(*row) for row in rows]
        return sorted(records, key=lambda record: record.name)

    def pause_schedules(self, names: Sequence[str], paused: bool) -> list[ScheduleRecord]:
        wanted = schedule_names(names, "pause_schedules")
        if not isinstance(paused, bool):
            raise InvalidRequest(f"pause_schedules: paused must be a bool, not {paused!r}")

        def attempt() -> list[ScheduleRecord]:
            now, reads, records = self._stored(wanted)
            moment = decode_time(now)
            new = [resumed(record, paused, moment) for record in records]
            self._write(now, [(read, record, ()) for read, record in zip(reads, new, strict=True)])
            return new

        result: list[ScheduleRecord] = self._retrying(attempt)
        return result

    def run_schedule(self, name: str) -> JobRecord:
        check_schedule_name(name)

        def attempt() -> JobRecord:
            now, reads, (record,) = self._stored([name])
            request = run_request(record.schedule, decode_time(now))
            ((last, created),) = self._write(now, [(reads[0], record, (request,))])
            if created:
                return created[0]
            assert last is not None  # the write named the job that holds the key
            (job,) = self._get_jobs([last])
            return job

        result: JobRecord = self._retrying(attempt)
        return result

    def drop_schedules(self, names: Sequence[str]) -> None:
        wanted = schedule_names(names, "drop_schedules")
        self._call("sched_drop", *wanted)

    def _get_jobs(self, ids: Sequence[int]) -> list[JobRecord]:
        return [decode_job(as_dict(flat)) for flat in self._call("get", *map(str, ids))]
