"""The SQLite driver's paused queues: one row per paused queue.

``pause_queues`` is one ``BEGIN IMMEDIATE`` transaction; ``lease`` reads the
table in its own transaction, so a lease that begins after a pause committed
never takes the queue's jobs.  The rules come from :mod:`taskharbor.spec.queues`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from taskharbor.spec.queues import (
    QueueRecord,
    check_paused,
    paused_record,
    queue_names,
    unpaused,
)

from .rows import from_micros, to_micros
from .writes import Writes

MIGRATION = (
    """
    CREATE TABLE paused_queues (
        name TEXT PRIMARY KEY,
        paused_at INTEGER NOT NULL
    )
    """,
)
"""Schema step that adds the paused queues table (see ``schema.MIGRATIONS``)."""


def _stored(tx: Writes, names: Sequence[str]) -> dict[str, QueueRecord]:
    rows = tx.conn.execute(
        "SELECT name, paused_at FROM paused_queues WHERE name IN (SELECT value FROM json_each(?))",
        (json.dumps(list(names)),),
    ).fetchall()
    return {row[0]: QueueRecord(row[0], from_micros(row[1])) for row in rows}


def leased_queues(tx: Writes, queues: tuple[str, ...]) -> tuple[str, ...]:
    """The queues of ``queues`` that are not paused, read in the caller's transaction."""
    paused = _stored(tx, queues)
    return unpaused(queues, paused.keys()) if paused else queues


class SQLiteQueues:
    """The ``queue_pause`` calls of :class:`~taskharbor.drivers.sqlite.SQLiteDriver`."""

    _transaction: Callable[..., AbstractContextManager[Writes]]

    def pause_queues(self, queues: Sequence[str], paused: bool) -> list[QueueRecord]:
        names = queue_names(queues, "pause_queues")
        check_paused(paused, "pause_queues")
        with self._transaction() as tx:
            stored = _stored(tx, names)
            records = [paused_record(stored.get(n), n, paused, tx.now) for n in names]
            if paused:
                tx.conn.executemany(
                    "INSERT OR IGNORE INTO paused_queues (name, paused_at) VALUES (?, ?)",
                    [(r.name, to_micros(r.paused_at)) for r in records if r.paused_at],
                )
            else:
                tx.conn.executemany(
                    "DELETE FROM paused_queues WHERE name = ?", [(n,) for n in names]
                )
            return records

    def paused_queues(self) -> list[QueueRecord]:
        with self._transaction(write=False) as tx:
            rows = tx.conn.execute(
                "SELECT name, paused_at FROM paused_queues ORDER BY name"
            ).fetchall()
            return [QueueRecord(row[0], from_micros(row[1])) for row in rows]
