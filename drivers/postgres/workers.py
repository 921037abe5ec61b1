"""The PostgreSQL driver's workers registry: one row per worker, each call one transaction.

The rules come from :mod:`taskharbor.spec.workers`.  Whether a worker is gone
or forgotten is decided in Python with the spec's own functions, on its
stored ``last_seen_at`` and ``ttl_seconds``, so every store agrees to the
microsecond; SQL only narrows the rows to look at.  A lease heartbeat marks
its holders seen inside its own statement (:data:`SEEN_BY_HEARTBEAT`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from taskharbor.spec.table import JobState
from taskharbor.spec.workers import (
    FORGET_AFTER_TTLS,
    WorkerInfo,
    WorkerRecord,
    check_worker_ids,
    check_workers,
    is_forgotten,
    is_gone,
)

from .tables import Tables
from .transitions import job_state

Row = dict[str, Any]
Params = dict[str, Any]
T = TypeVar("T")


def workers_table(schema: str) -> list[sql.Composed]:
    """Migration: the workers registry."""
    return [
        sql.SQL(
            """
            CREATE TABLE {} (
                id text PRIMARY KEY,
                host text NOT NULL,
                pid integer NOT NULL,
                queues text[] NOT NULL,
                concurrency integer NOT NULL,
                version text NOT NULL,
                ttl_seconds double precision NOT NULL,
                started_at timestamptz NOT NULL,
                last_seen_at timestamptz NOT NULL
            )
            """
        ).format(sql.Identifier(schema, "workers"))
    ]


SEEN_BY_HEARTBEAT = """,
seen AS (
    UPDATE {workers} w SET last_seen_at = {now}
    WHERE w.id IN (SELECT DISTINCT a.leased_by FROM applied a)
)"""
"""The part of the heartbeat statement that marks the holders of its applied leases seen
(a data-modifying ``WITH`` runs whether or not the query reads it)."""

_FORGET_CANDIDATES = """
SELECT id, last_seen_at, ttl_seconds FROM {workers}
WHERE last_seen_at + make_interval(secs => %(forget_after)s * ttl_seconds)
      <= {now} + interval '1 millisecond'
ORDER BY id FOR UPDATE SKIP LOCKED
"""
"""Workers that may be forgotten (a margin for float rounding; Python decides exactly).
A row another call holds is being seen or deleted: skipped."""

_COLUMNS = "id, host, pid, queues, concurrency, version, ttl_seconds, started_at, last_seen_at"

_SELECT_ALL = """
SELECT w.*, ARRAY(SELECT j.id FROM {jobs} j
                  WHERE j.state = {running} AND j.leased_by = w.id ORDER BY j.id) AS running
FROM {workers} w ORDER BY w.id
"""
"""Every worker with the running jobs it holds (through the index of leased jobs)."""

_SELECT_SOME = _SELECT_ALL.replace("ORDER BY w.id", "WHERE w.id = ANY(%(ids)s) ORDER BY w.id")


class PostgresWorkers:
    """The ``workers`` calls of :class:`~taskharbor.drivers.postgres.PostgresDriver`."""

    _tables: Tables

    @abc.abstractmethod
    def _run(
        self, body: Callable[[psycopg.Cursor[Row], Params], T], *, transaction: bool = True
    ) -> T:
        """One call in one transaction (the driver's own, see ``PostgresDriver._run``)."""

    def _workers_sql(self, template: str) -> sql.Composed:
        return self._tables.sql(
            template,
            workers=sql.Identifier(self._tables.schema, "workers"),
            running=job_state(JobState.RUNNING),
        )

    def _call_time(self, cur: psycopg.Cursor[Row], params: Params) -> datetime:
        row = cur.execute(self._workers_sql("SELECT {now} AS now"), params).fetchone()
        assert row is not None
        moment: datetime = row["now"]
        return moment

    def _forget_workers(self, cur: psycopg.Cursor[Row], params: Params, now: datetime) -> None:
        rows = cur.execute(
            self._workers_sql(_FORGET_CANDIDATES), {**params, "forget_after": FORGET_AFTER_TTLS}
        ).fetchall()
        doomed = [
            row["id"] for row in rows if is_forgotten(row["last_seen_at"], row["ttl_seconds"], now)
        ]
        if doomed:
            cur.execute(
                self._workers_sql("DELETE FROM {workers} WHERE id = ANY(%(ids)s)"), {"ids": doomed}
            )

    def _worker_records(
        self, cur: psycopg.Cursor[Row], params: Params, now: datetime, ids: Sequence[str] | None
    ) -> list[WorkerRecord]:
        """The stored workers (all, or those of ``ids``) by id, as read at ``now``."""
        query = self._workers_sql(_SELECT_ALL if ids is None else _SELECT_SOME)
        rows = cur.execute(query, {**params, "ids": list(ids or ())}).fetchall()
        return [_record(row, now) for row in rows]

    def register_workers(self, workers: Sequence[WorkerInfo]) -> list[WorkerRecord]:
        infos = check_workers(workers)

        def body(cur: psycopg.Cursor[Row], params: Params) -> list[WorkerRecord]:
            now = self._call_time(cur, params)
            self._forget_workers(cur, params, now)
            cur.executemany(
                self._workers_sql(
                    f"INSERT INTO {{workers}} ({_COLUMNS})"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,"
                    " queues = EXCLUDED.queues, concurrency = EXCLUDED.concurrency,"
                    " version = EXCLUDED.version, ttl_seconds = EXCLUDED.ttl_seconds,"
                    " started_at = EXCLUDED.started_at, last_seen_at = EXCLUDED.last_seen_at"
                ),
                [
                    (
                        i.id,
                        i.host,
                        i.pid,
                        list(i.queues),
                        i.concurrency,
                        i.version,
                        i.ttl_seconds,
                        now,
                        now,
                    )
                    for i in infos
                ],
            )
            by_id = {r.id: r for r in self._worker_records(cur, params, now, [i.id for i in infos])}
            return [by_id[info.id] for info in infos]

        return self._run(body)

    def heartbeat_workers(self, worker_ids: Sequence[str]) -> list[str]:
        ids = check_worker_ids(worker_ids, "heartbeat_workers")

        def body(cur: psycopg.Cursor[Row], params: Params) -> list[str]:
            now = self._call_time(cur, params)
            self._forget_workers(cur, params, now)
            seen = {
                row["id"]
                for row in cur.execute(
                    self._workers_sql(
                        "UPDATE {workers} SET last_seen_at = {now}"
                        " WHERE id = ANY(%(ids)s) RETURNING id"
                    ),
                    {**params, "ids": list(ids)},
                ).fetchall()
            }
            return [worker_id for worker_id in ids if worker_id not in seen]

        return self._run(body)

    def deregister_workers(self, worker_ids: Sequence[str]) -> None:
        ids = check_worker_ids(worker_ids, "deregister_workers")

        def body(cur: psycopg.Cursor[Row], params: Params) -> None:
            self._forget_workers(cur, params, self._call_time(cur, params))
            cur.execute(
                self._workers_sql("DELETE FROM {workers} WHERE id = ANY(%(ids)s)"),
                {"ids": list(ids)},
            )

        self._run(body)

    def list_workers(self) -> list[WorkerRecord]:
        def body(cur: psycopg.Cursor[Row], params: Params) -> list[WorkerRecord]:
            return self._worker_records(cur, params, self._call_time(cur, params), None)

        return self._run(body)


def _record(row: Row, now: datetime) -> WorkerRecord:
    return WorkerRecord(
        id=row["id"],
        host=row["host"],
        pid=row["pid"],
        queues=tuple(row["queues"]),
        concurrency=row["concurrency"],
        version=row["version"],
        ttl_seconds=row["ttl_seconds"],
        started_at=row["started_at"].astimezone(UTC),
        last_seen_at=row["last_seen_at"].astimezone(UTC),
        running=tuple(row["running"]),
        gone=is_gone(row["last_seen_at"], row["ttl_seconds"], now),
    )
