"""Flow control in the SQLite store: the schema it needs and the lease guards' lookups.

Each job keeps its limits as JSON text (``flow``) and, for the indexes, its key
(``flow_key``) and sequence mode (``flow_sequence``).  Every lookup of
:class:`~taskharbor.drivers.flow_gate.FlowCounts` is one probe of a partial index;
the lease runs them inside its write transaction, so no other process can take a
slot between the count and the lease.  ``flow_starts`` keeps the rate buckets'
starts (at most a day of them: older ones are deleted as the bucket is used).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from taskharbor.spec import JobState
from taskharbor.spec.flow import MAX_RATE_WINDOW_SECONDS, OnDead
from taskharbor.spec.records import JobId

from ..flow_gate import FlowCounts
from .rows import to_micros
from .transitions import FINISHED_STATES, literal

_RUNNING = f"state = {literal(JobState.RUNNING)}"
_HOLDS_SEQUENCE = (
    f"flow_sequence IS NOT NULL AND (state NOT IN {FINISHED_STATES} OR "
    f"(state = {literal(JobState.DEAD)} AND flow_sequence = '{OnDead.BLOCK.value}'))"
)
"""The sequence jobs that hold back the later jobs of their key (spec/flow.py)."""

MIGRATION = (
    "ALTER TABLE jobs ADD COLUMN flow TEXT",
    "ALTER TABLE jobs ADD COLUMN flow_key TEXT",
    "ALTER TABLE jobs ADD COLUMN flow_sequence TEXT",
    f"CREATE INDEX jobs_running_task ON jobs (task) WHERE {_RUNNING}",
    f"CREATE INDEX jobs_running_key ON jobs (flow_key) WHERE {_RUNNING} AND flow_key IS NOT NULL",
    f"CREATE INDEX jobs_sequence ON jobs (flow_key, id) WHERE {_HOLDS_SEQUENCE}",
    "CREATE TABLE flow_starts (bucket TEXT NOT NULL, started_at INTEGER NOT NULL)",
    "CREATE INDEX flow_starts_bucket ON flow_starts (bucket, started_at)",
)
"""The schema of flow control: its columns, the guards' indexes, the starts table."""

_FORGET_AFTER = timedelta(seconds=MAX_RATE_WINDOW_SECONDS)


RUNNING_OF_TASK = f"SELECT count(*) FROM jobs WHERE {_RUNNING} AND task = ?"
RUNNING_WITH_KEY = f"SELECT count(*) FROM jobs WHERE {_RUNNING} AND flow_key = ?"
SEQUENCE_HEAD = f"SELECT min(id) FROM jobs WHERE {_HOLDS_SEQUENCE} AND flow_key = ?"
STARTS_SINCE = "SELECT count(*) FROM flow_starts WHERE bucket = ? AND started_at > ?"
"""The guards' lookups, each one probe of the index made for it above."""


class SQLiteFlowCounts(FlowCounts):
    """The guards' lookups on one connection, inside the lease's transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _one(self, query: str, *params: object) -> int | None:
        row = self._conn.execute(query, params).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def running_of_task(self, task: str) -> int:
        return self._one(RUNNING_OF_TASK, task) or 0

    def running_with_key(self, key: str) -> int:
        return self._one(RUNNING_WITH_KEY, key) or 0

    def sequence_head(self, key: str) -> JobId | None:
        return self._one(SEQUENCE_HEAD, key)

    def starts_since(self, bucket: str, since: datetime) -> int:
        return self._one(STARTS_SINCE, bucket, to_micros(since)) or 0


def record_starts(conn: sqlite3.Connection, starts: list[tuple[str, datetime]]) -> None:
    """Store the starts a lease made, and forget its buckets' starts older than a day."""
    conn.executemany(
        "INSERT INTO flow_starts (bucket, started_at) VALUES (?, ?)",
        [(bucket, to_micros(at)) for bucket, at in starts],
    )
    conn.executemany(
        "DELETE FROM flow_starts WHERE bucket = ? AND started_at <= ?",
        [(bucket, to_micros(at - _FORGET_AFTER)) for bucket, at in dict(starts).items()],
    )
