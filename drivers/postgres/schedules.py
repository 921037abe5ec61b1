"""The PostgreSQL driver's schedules: one row per schedule, locked by the call that moves it.

``enqueue_due_ticks`` locks the named rows (``FOR UPDATE``, in name order so
two callers never deadlock), plans their ticks from the locked cursor, stores
the ticks' jobs through the driver's keyed enqueue and moves the cursors, in
one transaction.  A second worker asking at the same instant waits for the
lock and then reads the moved cursor (``READ COMMITTED`` re-reads a row it
waited for), so it finds nothing left to do: one job per tick, whatever the
number of workers and hosts.  ``sync_schedules`` takes a transaction-level
advisory lock, so that two workers declaring a new schedule at once store it
once.  The rules come from :mod:`taskharbor.spec.schedules`.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql

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

from .tables import Tables

T = TypeVar("T")
Row = dict[str, Any]
Params = dict[str, Any]

_FINISHED = [state.value for state in FINISHED_JOB_STATES]
_FOR_UPDATE = sql.SQL(" FOR UPDATE")
_UNLOCKED = sql.SQL("")


def schedules_table(schema: str) -> list[sql.Composed]:
    """Migration 2: the schedules table."""
    return [
        sql.SQL(
            """
            CREATE TABLE {} (
                name text PRIMARY KEY,
                definition text NOT NULL,
                paused boolean NOT NULL,
                cursor timestamptz NOT NULL,
                last_job_id bigint
            )
            """
        ).format(sql.Identifier(schema, "schedules"))
    ]


def _record(row: Row) -> ScheduleRecord:
    return ScheduleRecord(
        schedule_from_json(row["name"], row["definition"]),
        paused=row["paused"],
        cursor=row["cursor"],
        last_job_id=row["last_job_id"],
    )


class PostgresSchedules:
    """The ``schedules`` calls of :class:`~taskharbor.drivers.postgres.PostgresDriver`."""

    _tables: Tables
    _prepare: bool | None

    @abc.abstractmethod
    def _run(
        self, body: Callable[[psycopg.Cursor[Row], Params], T], *, transaction: bool = True
    ) -> T:
        """One call in one transaction (the driver's own, see ``PostgresDriver._run``)."""

    _enqueue_on: Callable[
        [psycopg.Cursor[Row], Sequence[EnqueueRequest], datetime | None, bool | None],
        list[EnqueueResult],
    ]

    def _table(self) -> sql.Identifier:
        return sql.Identifier(self._tables.schema, "schedules")

    def _locked(self, cur: psycopg.Cursor[Row], names: Sequence[str]) -> list[ScheduleRecord]:
        return self._named(cur, names, lock=True)

    def _named(
        self, cur: psycopg.Cursor[Row], names: Sequence[str], *, lock: bool
    ) -> list[ScheduleRecord]:
        """The named rows, in the order given; ``ScheduleNotFound`` for the first missing.

        With ``lock``, the rows are locked in name order, whatever the order given.
        """
        query = sql.SQL("SELECT * FROM {} WHERE name = ANY(%s) ORDER BY name{}").format(
            self._table(), _FOR_UPDATE if lock else _UNLOCKED
        )
        found = {row["name"]: row for row in cur.execute(query, (list(names),)).fetchall()}
        for name in names:
            if name not in found:
                raise ScheduleNotFound(name)
        return [_record(found[name]) for name in names]

    def _store(self, cur: psycopg.Cursor[Row], records: Sequence[ScheduleRecord]) -> None:
        query = sql.SQL(
            "INSERT INTO {} (name, definition, paused, cursor, last_job_id)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET"
            " definition = EXCLUDED.definition, paused = EXCLUDED.paused,"
            " cursor = EXCLUDED.cursor, last_job_id = EXCLUDED.last_job_id"
        ).format(self._table())
        cur.executemany(
            query,
            [
                (r.name, schedule_to_json(r.schedule), r.paused, r.cursor, r.last_job_id)
                for r in records
            ],
        )

    def _call_now(self, cur: psycopg.Cursor[Row], params: Params) -> datetime:
        """The call's now: the given clock's, else the transaction's on the server."""
        row = cur.execute("SELECT COALESCE(%s::timestamptz, now()) AS now", (params["now"],))
        moment: datetime = row.fetchone()["now"]  # type: ignore[index]
        return moment

    def sync_schedules(self, schedules: Sequence[Schedule]) -> list[ScheduleRecord]:
        declared = check_schedules(schedules, "sync_schedules")
        lock = _lock_key(self._tables.schema)

        def body(cur: psycopg.Cursor[Row], params: Params) -> list[ScheduleRecord]:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            now = self._call_now(cur, params)
            query = sql.SQL("SELECT * FROM {} WHERE name = ANY(%s) FOR UPDATE").format(
                self._table()
            )
            names = [schedule.name for schedule in declared]
            stored = {row["name"]: _record(row) for row in cur.execute(query, (names,))}
            records = [synced(stored.get(s.name), s, now) for s in declared]
            self._store(cur, records)
            return records

        return self._run(body)

    def enqueue_due_ticks(self, names: Sequence[str]) -> TickResult:
        wanted = schedule_names(names, "enqueue_due_ticks")

        def body(cur: psycopg.Cursor[Row], params: Params) -> TickResult:
            now = self._call_now(cur, params)
            # A first look without locks: most calls (every worker, every pass) find
            # nothing due and leave at once.
            seen = self._named(cur, wanted, lock=False)
            first = self._plans(cur, seen, now)
            if idle(seen, first):
                return TickResult((), earliest_tick(seen))
            # Then lock the rows with ticks due, skipping those another caller holds:
            # that caller is enqueueing them (or a pause or sync holds them), and a
            # tick it leaves (one after its now) is due again at the next pass.
            due = [r.name for r, p in zip(seen, first, strict=True) if not idle([r], [p])]
            query = sql.SQL(
                "SELECT * FROM {} WHERE name = ANY(%s) ORDER BY name FOR UPDATE SKIP LOCKED"
            ).format(self._table())
            locked = {row["name"]: row for row in cur.execute(query, (due,)).fetchall()}
            records = [_record(locked[name]) for name in due if name in locked]
            plans = self._plans(cur, records, now)
            requests = [request for plan in plans for request in plan.requests]
            outcomes = self._enqueue_on(cur, requests, now, self._prepare) if requests else []
            after: list[ScheduleRecord] = []
            done = 0
            for record, plan in zip(records, plans, strict=True):
                mine = outcomes[done : done + len(plan.requests)]
                done += len(plan.requests)
                last_job_id = mine[-1].job.id if mine else record.last_job_id
                after.append(replace(record, cursor=plan.cursor, last_job_id=last_job_id))
            moved = [new for new, old in zip(after, records, strict=True) if new != old]
            if moved:
                cur.execute(
                    sql.SQL(
                        "UPDATE {} AS s SET cursor = v.cursor, last_job_id = v.last_job_id"
                        " FROM unnest(%s::text[], %s::timestamptz[], %s::bigint[])"
                        " AS v(name, cursor, last_job_id) WHERE s.name = v.name"
                    ).format(self._table()),
                    (
                        [r.name for r in moved],
                        [r.cursor for r in moved],
                        [r.last_job_id for r in moved],
                    ),
                )
            created = tuple(outcome.job for outcome in outcomes if outcome.created)
            latest = {record.name: record for record in (*seen, *after)}
            return TickResult(created, earliest_tick(list(latest.values())))

        return self._run(body)

    def _plans(
        self, cur: psycopg.Cursor[Row], records: Sequence[ScheduleRecord], now: datetime
    ) -> list[TickPlan]:
        unfinished = self._unfinished(cur, [r for r in records if r.schedule.skip_if_running])
        return [plan_ticks(r, now, r.last_job_id in unfinished) for r in records]

    def _unfinished(self, cur: psycopg.Cursor[Row], records: Sequence[ScheduleRecord]) -> set[int]:
        """The last job ids of ``records`` that are stored and not finished."""
        ids = [r.last_job_id for r in records if r.last_job_id is not None]
        if not ids:
            return set()
        query = self._tables.sql("SELECT id FROM {jobs} WHERE id = ANY(%s) AND state <> ALL(%s)")
        return {row["id"] for row in cur.execute(query, (ids, _FINISHED))}

    def list_schedules(self) -> list[ScheduleRecord]:
        def body(cur: psycopg.Cursor[Row], params: Params) -> list[ScheduleRecord]:
            query = sql.SQL("SELECT * FROM {} ORDER BY name").format(self._table())
            return [_record(row) for row in cur.execute(query)]

        return self._run(body, transaction=False)

    def pause_schedules(self, names: Sequence[str], paused: bool) -> list[ScheduleRecord]:
        wanted = schedule_names(names, "pause_schedules")
        if not isinstance(paused, bool):
            raise InvalidRequest(f"pause_schedules: paused must be a bool, not {paused!r}")

        def body(cur: psycopg.Cursor[Row], params: Params) -> list[ScheduleRecord]:
            now = self._call_now(cur, params)
            records = [resumed(record, paused, now) for record in self._locked(cur, wanted)]
            self._store(cur, records)
            return records

        return self._run(body)

    def run_schedule(self, name: str) -> JobRecord:
        check_schedule_name(name)

        def body(cur: psycopg.Cursor[Row], params: Params) -> JobRecord:
            now = self._call_now(cur, params)
            (record,) = self._locked(cur, [name])
            (outcome,) = self._enqueue_on(
                cur, [run_request(record.schedule, now)], now, self._prepare
            )
            self._store(cur, [replace(record, last_job_id=outcome.job.id)])
            return outcome.job

        return self._run(body)

    def drop_schedules(self, names: Sequence[str]) -> None:
        wanted = schedule_names(names, "drop_schedules")

        def body(cur: psycopg.Cursor[Row], params: Params) -> None:
            self._locked(cur, wanted)
            query = sql.SQL("DELETE FROM {} WHERE name = ANY(%s)").format(self._table())
            cur.execute(query, (list(wanted),))

        self._run(body)


def _lock_key(schema: str) -> int:
    digest = hashlib.blake2b(f"taskharbor schedules {schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
