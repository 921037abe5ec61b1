"""The group walk of PostgreSQL's ``lease_limited`` under real concurrent connections.

The heads table (:mod:`taskharbor.drivers.postgres.flow`) is a hint, a lower bound
of each group's first available job, that writers only add to and leases tidy.  The
race that could lose a job: a lease reads a group's hints, another connection makes
a job of the group available (ahead of its first one, or anywhere) and commits, and
the lease then deletes hints as if that job did not exist.  Here writers keep adding
jobs to a few groups at random priorities while workers lease, complete and tidy; a
checker reads, in one snapshot at a time, whether some available limited job has no
hint at or ahead of it, and at the end every job must have run.
"""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest
from test_postgres_support import MakeDriver, make_driver

from driver_registry import POSTGRES_URL
from taskharbor.spec import Completion, EnqueueRequest, FlowLimits, JobState

__all__ = ["make_driver"]

pytestmark = pytest.mark.postgres

WRITERS = 3
WORKERS = 4
JOBS_PER_WRITER = 150
KEYS = 4
IDLE = 3.0
"""Seconds without a lease, once every job is written, after which the rest are lost."""

UNCOVERED = """
SELECT j.id FROM {jobs} j
WHERE j.state = 'available' AND j.flow IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM {heads} h
    WHERE h.queue = j.queue AND h.task = j.task AND h.flow = j.flow
      AND (h.rank, h.run_at, h.id) <= (-j.priority::integer, j.run_at, j.id))
"""
"""Available limited jobs with no hint at or ahead of them: each one a lost job."""


def uncovered(conn: psycopg.Connection[tuple[int]], schema: str) -> list[int]:
    query = psycopg.sql.SQL(UNCOVERED).format(
        jobs=psycopg.sql.Identifier(schema, "jobs"),
        heads=psycopg.sql.Identifier(schema, "flow_heads"),
    )
    return [row[0] for row in conn.execute(query)]


def test_writers_and_leases_at_once_never_leave_an_available_job_unhinted(
    make_driver: MakeDriver,
) -> None:
    first = make_driver(pool_size=2)
    schema = first._tables.schema
    writers = [make_driver(schema=schema, migrate=False, pool_size=1) for _ in range(WRITERS)]
    workers = [make_driver(schema=schema, migrate=False, pool_size=1) for _ in range(WORKERS)]
    total = WRITERS * JOBS_PER_WRITER
    done: list[int] = []
    writing = threading.Event()
    writing.set()
    stopped = threading.Event()
    failures: list[BaseException] = []
    lost: list[list[int]] = []

    def write(index: int) -> None:
        chance = random.Random(index)
        driver = writers[index]
        for _ in range(JOBS_PER_WRITER // 3):
            driver.enqueue(
                [
                    EnqueueRequest(
                        "walk.race",
                        priority=chance.randint(-3, 3),
                        flow=FlowLimits(key=f"k{chance.randrange(KEYS)}", key_concurrency=1),
                    )
                    for _ in range(3)
                ]
            )
            time.sleep(chance.random() / 200)

    def work(index: int) -> None:
        driver = workers[index]
        idle_since = time.monotonic()
        while len(done) < total:
            jobs = driver.lease(["default"], 2, 60.0, f"w{index}")
            if not jobs:
                if not writing.is_set() and time.monotonic() - idle_since > IDLE:
                    return  # nothing found for a while with every job written: some are lost
                time.sleep(0.002)
                continue
            idle_since = time.monotonic()
            assert driver.complete([Completion(j.id, str(j.lease_token)) for j in jobs]) == []
            done.extend(j.id for j in jobs)

    def check() -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            while not stopped.is_set():
                found = uncovered(conn, schema)
                if found:
                    lost.append(found)
                time.sleep(0.005)

    def guarded(target: object, *args: int) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)  # type: ignore[operator]
            except BaseException as exc:
                failures.append(exc)

        return threading.Thread(target=run)

    writer_threads = [guarded(write, i) for i in range(WRITERS)]
    worker_threads = [guarded(work, i) for i in range(WORKERS)]
    checker = guarded(check)
    for thread in [*writer_threads, *worker_threads, checker]:
        thread.start()
    for thread in writer_threads:
        thread.join()
    writing.clear()
    for thread in worker_threads:
        thread.join()
    stopped.set()
    checker.join()
    assert failures == []
    assert lost == [], f"available jobs without a hint at or ahead of them: {lost[:3]}"
    assert sorted(done) == sorted(set(done)), "a job was leased twice"
    assert first.count() == {("default", JobState.SUCCEEDED): total}
