"""``finished_per_minute`` reads an index or counters on every store, never every job:
SQLite and PostgreSQL read one range of ``jobs_finished_counts``; Redis keeps one hash
per minute, counted once from the finished jobs of an older store by ``migrate``, and
gone with the minute's last job."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from test_postgres_support import MakeDriver, copy_job, make_driver

from driver_registry import POSTGRES_URL, redis_store
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite import driver as sqlite_driver
from taskharbor.spec import (
    Completion,
    EnqueueRequest,
    FakeClock,
    FinishedCount,
    JobState,
    minute_of,
)

__all__ = ["make_driver"]  # the fixture

START = datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC)


def test_sqlite_reads_the_covering_index_alone(tmp_path: Path) -> None:
    SQLiteDriver(tmp_path / "plans.db").close()
    conn = sqlite3.connect(tmp_path / "plans.db")
    for query in (sqlite_driver._FINISHED_PER_MINUTE, sqlite_driver._FINISHED_PER_MINUTE_OF_QUEUE):
        plan = [
            row[3]
            for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", {"since": 0, "queue": "q"})
        ]
        assert plan[0].startswith("SEARCH jobs USING COVERING INDEX jobs_finished_counts"), plan
        assert not any(step.startswith("SCAN jobs") for step in plan), plan
    conn.close()


def test_postgres_reads_one_range_of_its_index_only(make_driver: MakeDriver) -> None:
    """20,000 finished jobs over two days and 20,000 waiting ones: the last hour's are
    read by an index-only scan of ``jobs_finished_counts``, never the table."""
    from taskharbor.drivers.postgres import statements

    clock = FakeClock(START)
    driver = make_driver(notifications=False, clock=clock)
    (done, waiting) = driver.enqueue([EnqueueRequest("t", queue="q"), EnqueueRequest("t")])
    (leased,) = driver.lease(["q"], 1, 30.0, "w")
    assert driver.complete([Completion(leased.id, str(leased.lease_token))]) == []
    schema = driver._tables.schema
    copy_job(schema, done.job.id, 20_000, finished_at="finished_at - n * interval '8 seconds'")
    copy_job(schema, waiting.job.id, 20_000)
    since = minute_of(START) - timedelta(minutes=59)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        query = b"EXPLAIN " + statements.finished_per_minute(driver._tables)
        plan = "\n".join(row[0] for row in conn.execute(query, {"since": since, "queue": None}))
    assert "Index Only Scan using jobs_finished_counts" in plan, plan
    assert "Seq Scan" not in plan, plan
    found = driver.finished_per_minute(since)
    # the job itself at 12:00:30, and a copy every 8 s before it back to 11:01:00
    assert sum(bucket.count for bucket in found) == 1 + 3570 // 8
    assert [bucket.minute for bucket in found] == [since + timedelta(minutes=m) for m in range(60)]
    assert {bucket.state for bucket in found} == {JobState.SUCCEEDED}


def test_redis_counts_an_older_stores_finished_jobs_once_when_migrated(tmp_path: Path) -> None:
    from taskharbor.drivers.redis.driver import SCHEMA_VERSION

    with redis_store(tmp_path) as make:
        clock = FakeClock(START)
        driver = make(clock)
        driver.enqueue([EnqueueRequest("t", queue="q") for _ in range(3)])
        for job in driver.lease(["q"], 2, 30.0, "w"):
            assert driver.complete([Completion(job.id, str(job.lease_token))]) == []
        minute = minute_of(START)
        counted = [FinishedCount(minute, "q", JobState.SUCCEEDED, 2)]
        assert driver.finished_per_minute(minute) == counted
        client = driver._client  # type: ignore[attr-defined]
        prefix = driver.prefix  # type: ignore[attr-defined]
        # as a store of version 2 was: no counts per minute
        client.delete(f"{prefix}fin", *client.keys(f"{prefix}fin:*"))
        client.hset(f"{prefix}meta", "version", "2")
        assert driver.finished_per_minute(minute) == []
        driver.migrate()
        driver.migrate()  # once only
        assert client.hget(f"{prefix}meta", "version") == SCHEMA_VERSION
        assert driver.finished_per_minute(minute) == counted
        # a minute's hash goes with its last job
        clock.advance(60)
        assert driver.prune(clock.now()) == 2
        assert driver.finished_per_minute(minute) == []
        assert client.keys(f"{prefix}fin:*") == []
        assert client.exists(f"{prefix}fin") == 0
