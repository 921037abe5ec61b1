"""Flow control in the SQL stores: old stores upgrade, and the guards' lookups are
index searches (the lease path never scans the jobs)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from test_postgres_support import MakeDriver, make_driver, unique_schema

from driver_registry import POSTGRES_URL
from taskharbor.drivers.postgres import flow as postgres_flow
from taskharbor.drivers.postgres import schema as postgres_schema
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite import flow as sqlite_flow
from taskharbor.drivers.sqlite import schema as sqlite_schema
from taskharbor.spec import EnqueueRequest, FakeClock, FlowLimits, JobState, OnDead

__all__ = ["make_driver"]  # the fixture, imported for its tests


def test_a_sqlite_store_from_before_flow_control_upgrades_with_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path)
    for migration in sqlite_schema.MIGRATIONS[:3]:
        for statement in migration:
            conn.execute(statement)
    conn.execute(
        f"INSERT INTO {sqlite_schema.META_TABLE} (key, value) VALUES ('schema_version', '3')"
    )
    conn.execute(
        "INSERT INTO jobs (task, queue, state, args, kwargs, priority, run_at, attempt,"
        " max_attempts, created_at) VALUES ('old', 'default', 'available', '[]', '{}', 0, 0, 0,"
        " 3, 0)"
    )
    conn.commit()
    conn.close()
    driver = SQLiteDriver(path, clock=FakeClock())
    try:
        (old,) = driver.get([1])
        assert old.flow is None
        limited = FlowLimits(concurrency=1, key="k", sequence=OnDead.BLOCK)
        new = [driver.enqueue([EnqueueRequest("new", flow=limited)])[0].job for _ in range(2)]
        leased = driver.lease(["default"], 10, 30, "w")
        assert [job.id for job in leased] == [old.id, new[0].id]
        assert driver.get([new[1].id])[0].state is JobState.AVAILABLE
    finally:
        driver.close()


def test_the_sqlite_flow_lookups_are_index_searches(tmp_path: Path) -> None:
    SQLiteDriver(tmp_path / "plans.db").close()
    conn = sqlite3.connect(tmp_path / "plans.db")
    lookups = {
        sqlite_flow.RUNNING_OF_TASK: ("jobs_running_task", ("t",)),
        sqlite_flow.RUNNING_WITH_KEY: ("jobs_running_key", ("k",)),
        sqlite_flow.SEQUENCE_HEAD: ("jobs_sequence", ("k",)),
        sqlite_flow.STARTS_SINCE: ("flow_starts_bucket", ("task:t", 0)),
    }
    for query, (index, params) in lookups.items():
        steps = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params)]
        assert any(f"INDEX {index}" in step for step in steps), (query, steps)
        assert not [step for step in steps if step.startswith("SCAN")], (query, steps)


@pytest.mark.postgres
def test_a_postgres_store_from_before_flow_control_upgrades_with_its_jobs(
    make_driver: MakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = unique_schema()
    make_driver(schema, migrate=False)  # registers the schema for dropping
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        (flow,) = [m for m in postgres_schema.MIGRATIONS if m.description == "flow control"]
        before = [m for m in postgres_schema.MIGRATIONS if m.version < flow.version]
        monkeypatch.setattr(postgres_schema, "MIGRATIONS", tuple(before))
        assert postgres_schema.migrate(conn, schema) == [m.version for m in before]
        monkeypatch.undo()
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (task, queue, state, args, kwargs, priority, run_at, attempt,"
                " max_attempts, created_at) VALUES ('old', 'default', 'available', '[]', '{{}}',"
                " 0, now() - interval '1 hour', 0, 3, now())"
            ).format(sql.Identifier(schema, "jobs"))
        )
    driver = make_driver(schema, clock=FakeClock(datetime.now(UTC) + timedelta(days=1)))
    (old,) = driver.get([1])
    assert old.flow is None
    limited = FlowLimits(concurrency=1, key="k", sequence=OnDead.BLOCK)
    new = [driver.enqueue([EnqueueRequest("new", flow=limited)])[0].job for _ in range(2)]
    leased = driver.lease(["default"], 10, 30, "w")
    assert [job.id for job in leased] == [old.id, new[0].id]
    assert driver.get([new[1].id])[0].state is JobState.AVAILABLE


@pytest.mark.postgres
def test_the_postgres_flow_lookups_can_use_their_indexes(make_driver: MakeDriver) -> None:
    """With sequential scans priced out, each lookup of ``lease_limited`` is an index
    scan of the partial index made for it (its predicate matches the lookup's)."""
    schema = unique_schema()
    make_driver(schema)
    values = {
        "task": sql.Literal("t"),
        "key": sql.Literal("k"),
        "bucket": sql.Literal("rate:task:t"),
        "since": sql.SQL("now()"),
    }
    indexes = {
        "running_of_task": "jobs_task_idx",
        "running_with_key": "jobs_flow_key_idx",
        "sequence_head": "jobs_flow_key_id_idx",
        "starts_since": "flow_starts_bucket_started_at_idx",
    }
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        for name, query in postgres_flow.lookups(schema, values).items():
            plan = "\n".join(row[0] for row in conn.execute(sql.SQL("EXPLAIN {}").format(query)))
            assert indexes[name] in plan, (name, plan)
            assert "Seq Scan" not in plan, (name, plan)
