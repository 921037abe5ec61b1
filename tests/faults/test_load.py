"""Load: many jobs through 4 worker processes on PostgreSQL, with random failures and retries.

The long form (``make faults``) runs 100,000 jobs; the short form a few
thousand.  About one job in ten fails once or twice before it succeeds (the
task retries after 0.1 s).  Every job must end succeeded, with the ledger
check passing: as many attempts as planned, each failure recorded once.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import fault_table
import psycopg
import pytest
from fault_fleet import Fleet, fresh_store, read_ledger
from fault_ledger import check_ledger
from fault_profile import scaled
from fault_worker import make_app
from psycopg import sql
from workflow_crash_app import Store

import taskharbor as th
from driver_registry import POSTGRES_URL
from taskharbor.spec import JobState

pytestmark = pytest.mark.postgres

JOBS = scaled(2_000, 100_000)
BATCH = 5_000
WORKERS = 4
WORKER = {"concurrency": 8, "lease": 10.0, "heartbeat_interval": 2.0}
TIMEOUT = scaled(120, 3600)
"""Seconds; a shared 2-core machine runs about 50 of these jobs a second."""


def analyze(store: Store) -> None:
    """Refresh the planner's statistics of the jobs table after the bulk enqueue.

    Until autovacuum gets to it, the statistics describe an empty table and
    each lease takes over 100 ms with 100,000 jobs waiting (2.5 ms after
    ``ANALYZE``).  That is a performance matter, reported on its own; this
    scenario is about every job being accounted for.
    """
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}.jobs").format(sql.Identifier(str(store.schema))))


def test_many_jobs_through_four_workers_are_all_accounted_for(tmp_path: Path) -> None:
    rng = random.Random(1)
    ledger = tmp_path / "ledger.jsonl"
    failures = {n: rng.choice([1, 1, 2]) for n in range(JOBS) if rng.random() < 0.1}
    with fresh_store("postgres", tmp_path) as store:
        app, work = make_app(store, ledger)
        for start in range(0, JOBS, BATCH):
            numbers = range(start, min(start + BATCH, JOBS))
            app.enqueue_many(work.s(n, 0.0, fail_below=failures.get(n, 0)) for n in numbers)
        analyze(store)
        with Fleet(store, ledger) as fleet:
            fleet.start(WORKERS, **WORKER)
            deadline = time.monotonic() + TIMEOUT
            fleet.wait_until(
                lambda: app.stats().get("default", {}).get(JobState.SUCCEEDED, 0) >= JOBS,
                "every job succeeded",
                deadline=deadline,
                poll=0.5,
            )
            fleet.stop()
        jobs: list[th.Job] = []
        while len(jobs) < JOBS:
            after = jobs[-1].id if jobs else None
            jobs += app.list_jobs(limit=10_000, after_id=after)
        figures = check_ledger(jobs, read_ledger(ledger), {})
        app.close()
    injected = sum(failures.values())
    fault_table.record(figures.row("load: 4 workers, random failures (postgres)", JOBS, injected))
    assert (figures.lost, figures.double_transitions) == (0, 0)
    for job in jobs:
        planned = failures.get(job.args[0], 0)
        assert job.attempt == planned + 1, job
        assert [error.type for error in job.errors] == ["RuntimeError"] * planned
