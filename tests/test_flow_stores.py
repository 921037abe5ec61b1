"""Flow control in the SQL stores: old stores upgrade, and the guards' lookups are
index searches (the lease path never scans the jobs)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite import flow as sqlite_flow
from taskharbor.drivers.sqlite import schema as sqlite_schema
from taskharbor.spec import EnqueueRequest, FakeClock, FlowLimits, JobState, OnDead


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
