"""``list_jobs(tag=...)`` reads a tag's own jobs on the SQL stores, never every job:
SQLite through ``job_tags`` (kept by triggers, pruned jobs included), PostgreSQL through
the partial GIN index on ``tags``."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from test_postgres_support import copy_job

from driver_registry import POSTGRES_URL, skip_without_postgres
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite import driver as sqlite_driver
from taskharbor.spec import Completion, EnqueueRequest, JobFilter, JobState

FILTERS = [
    JobFilter(tag="nightly"),
    JobFilter(tag="nightly", states=frozenset({JobState.DEAD})),
    JobFilter(tag="nightly", queue="q", newest_first=True),
]


def test_sqlite_reads_a_tags_rows_of_job_tags(tmp_path: Path) -> None:
    SQLiteDriver(tmp_path / "plans.db").close()
    conn = sqlite3.connect(tmp_path / "plans.db")
    for where in FILTERS:
        clause, params = sqlite_driver._filter_sql(where)
        order = "DESC" if where.newest_first else "ASC"
        query = f"SELECT id FROM jobs WHERE {clause} ORDER BY id {order} LIMIT 51"
        steps = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params)]
        assert "SEARCH job_tags USING PRIMARY KEY (tag=?)" in steps, steps
        assert not any(step.startswith("SCAN jobs") for step in steps), steps
    conn.close()


def test_sqlite_forgets_the_tags_of_pruned_jobs(tmp_path: Path) -> None:
    driver = SQLiteDriver(tmp_path / "store.db")
    driver.migrate()
    (kept, pruned) = driver.enqueue(
        [EnqueueRequest("t", tags=("a", "b")), EnqueueRequest("t", tags=("b",), queue="q")]
    )
    (leased,) = driver.lease(["q"], 1, 30.0, "w")
    assert not driver.complete([Completion(leased.id, str(leased.lease_token))])
    assert driver.prune(driver.clock.now().replace(year=2100)) == 1
    driver.close()
    with sqlite3.connect(tmp_path / "store.db") as conn:
        rows = conn.execute("SELECT tag, job_id FROM job_tags ORDER BY tag").fetchall()
    assert rows == [("a", kept.job.id), ("b", kept.job.id)]
    assert pruned.job.id != kept.job.id


def test_postgres_reads_a_tag_through_its_gin_index() -> None:
    skip_without_postgres()
    from taskharbor.drivers.postgres import PostgresDriver, statements

    schema = f"tags_{uuid.uuid4().hex[:10]}"
    driver = PostgresDriver(POSTGRES_URL, schema=schema, notifications=False)
    try:
        driver.migrate()
        driver.enqueue([EnqueueRequest("t", tags=("nightly",)) for _ in range(5)])
        (template,) = driver.enqueue([EnqueueRequest("t")])
        copy_job(schema, template.job.id, 20_000)  # untagged copies of one stored job
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            for where in FILTERS:
                asked = {"tag": where.tag}
                if where.states is not None:
                    asked["state"] = JobState.DEAD.value
                if where.queue is not None:
                    asked["queue"] = where.queue
                query = statements.list_jobs(driver._tables, tuple(asked), where.newest_first)
                plan = "\n".join(
                    row[0] for row in conn.execute(b"EXPLAIN " + query, {**asked, "limit": 51})
                )
                # a tag alone is read from its index; with a state or queue of few jobs,
                # their own index may be cheaper: never a walk of every job
                assert "Seq Scan" not in plan and "jobs_pkey" not in plan, plan
                if where == FILTERS[0]:
                    assert "jobs_tags" in plan, plan
        assert len(driver.list_jobs(JobFilter(tag="nightly"))) == 5
    finally:
        driver.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
