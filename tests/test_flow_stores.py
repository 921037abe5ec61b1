"""Flow control in the SQL stores: old stores upgrade, and the guards' lookups are
index searches (the lease path never scans the jobs)."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from migration_support import SQLITE_UNDO
from psycopg import sql
from test_postgres_support import MakeDriver, make_driver, unique_schema

from driver_registry import POSTGRES_URL
from taskharbor.conformance.harness import BOOM
from taskharbor.drivers.postgres import flow as postgres_flow
from taskharbor.drivers.postgres import schema as postgres_schema
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite import flow as sqlite_flow
from taskharbor.drivers.sqlite import schema as sqlite_schema
from taskharbor.drivers.sqlite import walk as sqlite_walk
from taskharbor.drivers.sqlite.transitions import ready_jobs_query
from taskharbor.spec import (
    Completion,
    EnqueueRequest,
    Failure,
    FakeClock,
    FlowLimits,
    JobFilter,
    JobRecord,
    JobState,
    OnDead,
    SnoozeRequest,
)

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


def test_the_sqlite_group_walk_and_its_triggers_are_index_searches(tmp_path: Path) -> None:
    """A lease's walk merges two index walks (no sort, no scan); a group's next job, a
    sequence head's place and a trigger's new top are each one index search."""
    SQLiteDriver(tmp_path / "plans.db").close()
    conn = sqlite3.connect(tmp_path / "plans.db")
    group = {"queue": "a", "group": 1}
    queues = {"q0": "a", "q1": "b", "q2": "c"}
    old_row = {**group, "flow_group": 1, "id": 1}
    statements = {
        "walk of one queue": (ready_jobs_query(1), {"q0": "a"}, "flow_tops_lease"),
        "walk of three queues": (ready_jobs_query(3), queues, "jobs_lease_unlimited"),
        "group's next job": (
            sqlite_walk.GROUP_AFTER,
            {**group, "priority": 0, "run_at": 0, "id": 1},
            "jobs_flow_group",
        ),
        "sequence head's place": (sqlite_walk.GROUP_MEMBER, old_row, "INTEGER PRIMARY KEY"),
        **{
            f"trigger step {n}": (step.replace("OLD.", ":"), old_row, index)
            for n, (step, index) in enumerate(
                zip(
                    sqlite_walk.LEAVES.split(";")[:2],
                    ("PRIMARY KEY", "jobs_flow_group"),
                    strict=True,
                )
            )
        },
    }
    for name, (query, params, index) in statements.items():
        steps = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params)]
        assert any(index in step for step in steps), (name, steps)
        assert not [step for step in steps if step.startswith("SCAN") or "TEMP" in step], (
            name,
            steps,
        )
    conn.close()


def test_the_sqlite_group_tops_stay_exact_through_every_write(tmp_path: Path) -> None:
    """``flow_tops`` is each group's first available job after any call (and after a
    row deleted by hand), as computed from the jobs themselves."""
    clock = FakeClock()
    driver = SQLiteDriver(tmp_path / "tops.db", clock=clock)
    conn = sqlite3.connect(tmp_path / "tops.db")
    limits = [
        FlowLimits(concurrency=2),
        FlowLimits(key="k", key_concurrency=1),
        FlowLimits(key="s", sequence=OnDead.BLOCK),
        None,
    ]
    rng = random.Random(17)
    running: list[JobRecord] = []
    seen: set[tuple[object, ...]] = set()

    def requests() -> list[EnqueueRequest]:
        return [
            EnqueueRequest(
                rng.choice(["t", "u"]),
                queue=rng.choice(["a", "b"]),
                priority=rng.randint(0, 2),
                run_at=clock.now() + timedelta(seconds=rng.randint(-5, 5)),
                flow=rng.choice(limits),
            )
            for _ in range(rng.randint(1, 4))
        ]

    def stop(job: JobRecord) -> None:
        token = str(job.lease_token)
        how = rng.randrange(4)
        if how == 0:
            assert driver.complete([Completion(job.id, token)]) == []
        elif how == 3:
            assert driver.snooze([SnoozeRequest(job.id, token, clock.now())]) == []
        else:
            retry_at = clock.now() + timedelta(seconds=rng.randint(0, 5))
            failure = Failure(job.id, token, BOOM, retry_at=retry_at, permanent=how == 2)
            assert driver.fail([failure]) == []

    for _ in range(400):
        action = rng.randrange(6)
        if action == 0:
            driver.enqueue(requests())
        elif action == 1:
            running += driver.lease(["a", "b"], rng.randint(1, 4), 30, "w")
        elif action == 2 and running:
            stop(running.pop(rng.randrange(len(running))))
        elif action == 3:
            clock.advance(rng.randint(1, 4))
            driver.promote()
        elif action == 4:
            jobs = driver.list_jobs(JobFilter(limit=1_000))
            ended = [job.id for job in jobs if job.state in (JobState.DEAD, JobState.CANCELLED)]
            if ended:
                driver.requeue(rng.sample(ended, min(len(ended), 2)))
        elif action == 5:
            waiting = (JobState.AVAILABLE, JobState.SCHEDULED, JobState.RETRYING)
            jobs = driver.list_jobs(JobFilter(limit=1_000))
            queued = [job.id for job in jobs if job.state in waiting]
            if queued:
                driver.cancel(rng.sample(queued, min(len(queued), 2)))
        tops = sorted(conn.execute("SELECT * FROM flow_tops"))
        assert tops == sorted(conn.execute(sqlite_walk.GROUP_TOPS))
        seen.update(tops)
    assert len(seen) > 50  # the tops moved through many jobs of many groups
    conn.execute("DELETE FROM jobs WHERE id IN (SELECT id FROM flow_tops)")
    conn.commit()
    assert sorted(conn.execute("SELECT * FROM flow_tops")) == sorted(
        conn.execute(sqlite_walk.GROUP_TOPS)
    )
    conn.close()
    driver.close()


def test_a_sqlite_store_from_before_the_group_walk_gets_its_groups_tops(tmp_path: Path) -> None:
    path = tmp_path / "v13.db"
    driver = SQLiteDriver(path, clock=FakeClock())
    flows = [FlowLimits(concurrency=1), FlowLimits(key="k", sequence=OnDead.BLOCK)]
    driver.enqueue(
        [
            EnqueueRequest(task, queue=queue, priority=n % 3, flow=flow)
            for n in range(12)
            for task in ("t", "u")
            for queue in ("a", "b")
            for flow in flows
        ]
    )
    driver.lease(["a"], 3, 30, "w")
    driver.close()
    with sqlite3.connect(path) as conn:
        expected = sorted(conn.execute(sqlite_walk.GROUP_TOPS))
        for statement in SQLITE_UNDO[14]:
            conn.execute(statement)
        conn.execute("UPDATE taskharbor_meta SET value = '13' WHERE key = 'schema_version'")
    SQLiteDriver(path).close()  # migrates
    with sqlite3.connect(path) as conn:
        assert len(expected) == 8  # 2 queues x 2 tasks x 2 limits
        groups = conn.execute("SELECT task, flow FROM flow_groups ORDER BY id").fetchall()
        assert len(groups) == 4
        assert sorted(conn.execute("SELECT * FROM flow_tops")) == expected
