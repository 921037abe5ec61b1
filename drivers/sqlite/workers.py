"""The SQLite driver's workers registry: one row per worker, each call one transaction.

The rules come from :mod:`taskharbor.spec.workers`.  Whether a worker is gone
or forgotten is decided in Python with the spec's own functions, on its
stored ``last_seen_at`` and ``ttl_seconds``, so every store agrees to the
microsecond; a registry holds a handful of rows.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager

from taskharbor.spec.records import JobId
from taskharbor.spec.table import JobState
from taskharbor.spec.workers import (
    WorkerInfo,
    WorkerRecord,
    check_worker_ids,
    check_workers,
    is_forgotten,
    is_gone,
)

from .rows import from_micros
from .writes import Writes

MIGRATION = (
    """
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        queues TEXT NOT NULL,
        concurrency INTEGER NOT NULL,
        version TEXT NOT NULL,
        ttl_seconds REAL NOT NULL,
        started_at INTEGER NOT NULL,
        last_seen_at INTEGER NOT NULL
    )
    """,
)
"""Schema step that adds the workers registry (see ``schema.MIGRATIONS``)."""

_COLUMNS = "id, host, pid, queues, concurrency, version, ttl_seconds, started_at, last_seen_at"

_RUNNING = "SELECT leased_by, id FROM jobs WHERE state = ? AND leased_by IS NOT NULL ORDER BY id"


def mark_seen(tx: Writes, worker_ids: Collection[str]) -> None:
    """``last_seen_at = now`` for the stored ones of ``worker_ids`` (a lease heartbeat)."""
    if worker_ids:
        tx.conn.execute(
            "UPDATE workers SET last_seen_at = ? WHERE id IN (SELECT value FROM json_each(?))",
            (tx.now_us, json.dumps(sorted(worker_ids))),
        )


def _forget(tx: Writes) -> None:
    rows = tx.conn.execute("SELECT id, last_seen_at, ttl_seconds FROM workers").fetchall()
    doomed = [
        worker_id
        for worker_id, last_seen_at, ttl_seconds in rows
        if is_forgotten(from_micros(last_seen_at), ttl_seconds, tx.now)
    ]
    if doomed:
        tx.conn.execute(
            "DELETE FROM workers WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(doomed),),
        )


def _records(tx: Writes, where: str = "", params: Sequence[object] = ()) -> list[WorkerRecord]:
    """The stored workers (by id), as read at the call's now."""
    running: dict[str, list[JobId]] = {}
    for holder, job_id in tx.conn.execute(_RUNNING, (JobState.RUNNING.value,)):
        running.setdefault(holder, []).append(job_id)
    rows = tx.conn.execute(f"SELECT {_COLUMNS} FROM workers {where} ORDER BY id", params)
    return [_record(row, running, tx) for row in rows]


def _record(row: sqlite3.Row, running: dict[str, list[JobId]], tx: Writes) -> WorkerRecord:
    worker_id, host, pid, queues, concurrency, version, ttl, started_at, last_seen_at = row
    seen = from_micros(last_seen_at)
    return WorkerRecord(
        id=worker_id,
        host=host,
        pid=pid,
        queues=tuple(json.loads(queues)),
        concurrency=concurrency,
        version=version,
        ttl_seconds=ttl,
        started_at=from_micros(started_at),
        last_seen_at=seen,
        running=tuple(running.get(worker_id, ())),
        gone=is_gone(seen, ttl, tx.now),
    )


class SQLiteWorkers:
    """The ``workers`` calls of :class:`~taskharbor.drivers.sqlite.SQLiteDriver`."""

    _transaction: Callable[..., AbstractContextManager[Writes]]

    def register_workers(self, workers: Sequence[WorkerInfo]) -> list[WorkerRecord]:
        infos = check_workers(workers)
        with self._transaction() as tx:
            _forget(tx)
            tx.conn.executemany(
                f"INSERT OR REPLACE INTO workers ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        info.id,
                        info.host,
                        info.pid,
                        json.dumps(list(info.queues)),
                        info.concurrency,
                        info.version,
                        info.ttl_seconds,
                        tx.now_us,
                        tx.now_us,
                    )
                    for info in infos
                ],
            )
            ids = json.dumps([info.id for info in infos])
            by_id = {
                record.id: record
                for record in _records(tx, "WHERE id IN (SELECT value FROM json_each(?))", (ids,))
            }
            return [by_id[info.id] for info in infos]

    def heartbeat_workers(self, worker_ids: Sequence[str]) -> list[str]:
        ids = check_worker_ids(worker_ids, "heartbeat_workers")
        with self._transaction(durable=False) as tx:
            _forget(tx)
            stored = {
                row[0]
                for row in tx.conn.execute(
                    "SELECT id FROM workers WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(ids),),
                )
            }
            mark_seen(tx, stored)
            return [worker_id for worker_id in ids if worker_id not in stored]

    def deregister_workers(self, worker_ids: Sequence[str]) -> None:
        ids = check_worker_ids(worker_ids, "deregister_workers")
        with self._transaction() as tx:
            _forget(tx)
            tx.conn.execute(
                "DELETE FROM workers WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            )

    def list_workers(self) -> list[WorkerRecord]:
        with self._transaction(write=False) as tx:
            return _records(tx)
