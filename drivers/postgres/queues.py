"""The PostgreSQL driver's paused queues: one row per paused queue.

``pause_queues`` inserts rows (``ON CONFLICT DO NOTHING``, so two operators
pausing one queue at once keep the first pause's instant) or deletes them in
one transaction; a resume wakes the queues' listeners as an enqueue would.
``lease`` reads the table in its own statement (see ``statements.lease``), so
a lease that begins after a pause committed never takes the queue's jobs.
The rules come from :mod:`taskharbor.spec.queues`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from taskharbor.spec.queues import QueueRecord, check_paused, queue_names

from .tables import Tables

T = TypeVar("T")
Row = dict[str, Any]
Params = dict[str, Any]


def paused_queues_table(schema: str) -> list[sql.Composed]:
    """Migration 7: the paused queues table."""
    return [
        sql.SQL("CREATE TABLE {} (name text PRIMARY KEY, paused_at timestamptz NOT NULL)").format(
            paused_table(schema)
        )
    ]


def paused_table(schema: str) -> sql.Identifier:
    """The paused queues table of ``schema``."""
    return sql.Identifier(schema, "paused_queues")


class PostgresQueues:
    """The ``queue_pause`` calls of :class:`~taskharbor.drivers.postgres.PostgresDriver`."""

    _tables: Tables
    _call_now: Callable[[psycopg.Cursor[Row], Params], datetime]
    _announce_queues: Callable[[psycopg.Cursor[Row], Sequence[str]], None]

    @abc.abstractmethod
    def _run(
        self, body: Callable[[psycopg.Cursor[Row], Params], T], *, transaction: bool = True
    ) -> T:
        """One call in one transaction (the driver's own, see ``PostgresDriver._run``)."""

    def pause_queues(self, queues: Sequence[str], paused: bool) -> list[QueueRecord]:
        names = queue_names(queues, "pause_queues")
        check_paused(paused, "pause_queues")
        table = paused_table(self._tables.schema)

        def body(cur: psycopg.Cursor[Row], params: Params) -> list[QueueRecord]:
            if not paused:
                cur.execute(
                    sql.SQL("DELETE FROM {} WHERE name = ANY(%s)").format(table), (list(names),)
                )
                self._announce_queues(cur, names)
                return [QueueRecord(name) for name in names]
            now = self._call_now(cur, params)
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (name, paused_at) SELECT name, %s FROM unnest(%s::text[])"
                    " AS name ON CONFLICT (name) DO NOTHING"
                ).format(table),
                (now, list(names)),
            )
            rows = cur.execute(
                sql.SQL("SELECT name, paused_at FROM {} WHERE name = ANY(%s)").format(table),
                (list(names),),
            ).fetchall()
            found = {row["name"]: row["paused_at"] for row in rows}
            return [QueueRecord(name, found[name]) for name in names]

        return self._run(body)

    def paused_queues(self) -> list[QueueRecord]:
        table = paused_table(self._tables.schema)

        def body(cur: psycopg.Cursor[Row], params: Params) -> list[QueueRecord]:
            query = sql.SQL("SELECT name, paused_at FROM {} ORDER BY name").format(table)
            return [QueueRecord(row["name"], row["paused_at"]) for row in cur.execute(query)]

        return self._run(body, transaction=False)
