"""Stores taken back to the schema before one migration, for the upgrade tests (no tests here).

Each helper migrates a fresh store, enqueues one job (task ``kept``, queue
``a``), undoes what the later migrations added and gives a driver opened
without migrating, so a test checks the refusal, migrates and finds the job.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from driver_registry import POSTGRES_URL, skip_without_postgres
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.spec import Driver, EnqueueRequest, JobRecord

SQLITE_UNDO: dict[int, tuple[str, ...]] = {
    2: ("DROP TABLE schedules",),
    3: ("ALTER TABLE jobs DROP COLUMN retry",),
    4: (
        "DROP INDEX jobs_running_task",
        "DROP INDEX jobs_running_key",
        "DROP INDEX jobs_sequence",
        *(f"ALTER TABLE jobs DROP COLUMN {name}" for name in ("flow", "flow_key", "flow_sequence")),
        "DROP TABLE flow_starts",
    ),
    5: (
        "DROP INDEX workflows_idempotency_key",
        "ALTER TABLE workflows DROP COLUMN idempotency_key",
    ),
    6: ("ALTER TABLE jobs DROP COLUMN headers",),
    7: ("DROP TABLE paused_queues",),
    8: ("ALTER TABLE workflows DROP COLUMN on_failure",),
    9: ("DROP TABLE workers",),
    10: (
        "ALTER TABLE workflows DROP COLUMN partial",
        "ALTER TABLE workflows DROP COLUMN tolerated",
    ),
    11: (
        "DROP TRIGGER job_tags_added",
        "DROP TRIGGER job_tags_removed",
        "DROP TABLE job_tags",
        *(f"ALTER TABLE jobs DROP COLUMN {name}" for name in ("tags", "meta", "progress")),
    ),
    12: ("ALTER TABLE jobs DROP COLUMN key_scope", "ALTER TABLE jobs DROP COLUMN given_up_key"),
    13: (
        "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL",
        "DROP INDEX jobs_finished_counts",
    ),
    14: (
        *(f"DROP TRIGGER flow_tops_{name}" for name in ("inserted", "moved", "deleted")),
        "DROP TABLE flow_tops",
        "DROP INDEX jobs_flow_group",
        "DROP INDEX jobs_lease_unlimited",
        "CREATE INDEX jobs_lease ON jobs (queue, priority DESC, run_at, id) "
        "WHERE state = 'available'",
        "ALTER TABLE jobs DROP COLUMN flow_group",
        "DROP TABLE flow_groups",
    ),
}
"""SQLite schema version -> the statements that undo the migration reaching it.  A new
migration adds its undo here (a test checks that every version has one)."""


def sqlite_before(path: Path, version: int) -> tuple[SQLiteDriver, JobRecord]:
    """A SQLite file taken back to schema ``version``: every later migration undone."""
    driver = SQLiteDriver(path)
    (kept,) = driver.enqueue([EnqueueRequest("kept", queue="a")])
    driver.close()
    with sqlite3.connect(path) as raw:
        for later in sorted((v for v in SQLITE_UNDO if v > version), reverse=True):
            for statement in SQLITE_UNDO[later]:
                raw.execute(statement)
        raw.execute(
            "UPDATE taskharbor_meta SET value = ? WHERE key = 'schema_version'", (str(version),)
        )
    return SQLiteDriver(path, migrate=False), kept.job


@contextmanager
def postgres_before(schema: str, table: str, version: int) -> Iterator[tuple[Driver, JobRecord]]:
    """A PostgreSQL ``schema`` without migration ``version``, which added ``table``."""
    skip_without_postgres()
    from taskharbor.drivers.postgres import PostgresDriver

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    driver = PostgresDriver(POSTGRES_URL, schema=schema, notifications=False)
    old: Driver | None = None
    try:
        driver.migrate()
        (kept,) = driver.enqueue([EnqueueRequest("kept", queue="a")])
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, table)))
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE version = %s").format(
                    sql.Identifier(schema, "schema_migrations")
                ),
                (version,),
            )
        old = PostgresDriver(POSTGRES_URL, schema=schema, notifications=False)
        yield old, kept.job
    finally:
        if old is not None:
            old.close()
        driver.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
