"""The schedules table arrives by migration: a store made before it keeps its jobs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from driver_registry import POSTGRES_URL, skip_without_postgres
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.spec import Driver, EnqueueRequest, SchemaError
from taskharbor.spec.schedules import Schedule


def declare(driver: Driver) -> None:
    schedule = Schedule("tick", EnqueueRequest("beat"), every=60)
    assert [r.name for r in driver.sync_schedules([schedule])] == ["tick"]


def test_a_sqlite_file_of_version_1_is_upgraded_with_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    driver = SQLiteDriver(path)
    (job,) = driver.enqueue([EnqueueRequest("kept")])
    driver.close()
    with sqlite3.connect(path) as raw:  # back to the schema before schedules
        raw.execute("DROP TABLE schedules")
        for later in ("retry", "headers"):  # added by the migrations after it
            raw.execute(f"ALTER TABLE jobs DROP COLUMN {later}")
        for index in ("jobs_running_task", "jobs_running_key", "jobs_sequence"):  # and flow's
            raw.execute(f"DROP INDEX {index}")
        for column in ("flow", "flow_key", "flow_sequence"):
            raw.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        raw.execute("DROP TABLE flow_starts")
        raw.execute("DROP INDEX workflows_idempotency_key")
        raw.execute("ALTER TABLE workflows DROP COLUMN idempotency_key")
        raw.execute("UPDATE taskharbor_meta SET value = '1' WHERE key = 'schema_version'")
    old = SQLiteDriver(path, migrate=False)
    with pytest.raises(SchemaError, match="older than"):
        old.list_schedules()
    old.migrate()
    assert old.get([job.job.id])[0].task == "kept"
    declare(old)
    old.close()


@pytest.mark.postgres
def test_a_postgres_schema_of_version_1_is_upgraded_with_its_jobs() -> None:
    skip_without_postgres()
    from taskharbor.drivers.postgres import PostgresDriver

    schema = "th_schedules_migration"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    driver = PostgresDriver(POSTGRES_URL, schema=schema, notifications=False)
    try:
        driver.migrate()
        (job,) = driver.enqueue([EnqueueRequest("kept")])
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "schedules")))
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE version = 2").format(
                    sql.Identifier(schema, "schema_migrations")
                )
            )
        old = PostgresDriver(POSTGRES_URL, schema=schema, notifications=False)
        with pytest.raises(SchemaError, match=r"missing migrations \[2\]"):
            old.list_schedules()
        old.migrate()
        assert old.get([job.job.id])[0].task == "kept"
        declare(old)
        old.close()
    finally:
        driver.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
