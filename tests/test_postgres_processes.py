"""Four worker processes share one PostgreSQL store: 10,000 jobs, failures, retries, crashes.

The workers are this file run as a script (``python test_postgres_processes.py
worker ...``), so they use the driver SPI exactly as separate programs would,
on the database clock.  Each writes a ledger line per run (job, attempt,
token, start and end on the system-wide monotonic clock); the test then
checks that no job was lost, none ran twice at once, and each ran exactly the
attempts its plan asks for.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from test_postgres_support import MakeDriver, make_driver

from driver_registry import POSTGRES_URL
from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.spec import (
    FINISHED_JOB_STATES,
    Completion,
    EnqueueRequest,
    ErrorReport,
    Failure,
    JobFilter,
    JobState,
)

__all__ = ["make_driver"]

pytestmark = pytest.mark.postgres

JOBS = 10_000
WORKERS = 4
MAX_ATTEMPTS = 3
LEASE_SECONDS = 2.0
"""Short, so that the jobs a worker abandons are rescued quickly."""
UNFINISHED = frozenset(JobState) - FINISHED_JOB_STATES


# -- the work plan --------------------------------------------------------------------


def abandoned_at_first(n: int) -> bool:
    """The worker "crashes" on this job's first attempt: it never reports it."""
    return n % 1000 == 5


def attempts_needed(n: int) -> int:
    if n % 50 == 7:
        return MAX_ATTEMPTS  # fails every time: dead once attempts are exhausted
    if n % 10 == 3 or abandoned_at_first(n):
        return 2  # fails (or is abandoned) once, then succeeds
    return 1  # succeeds at once, or (n % 25 == 4) fails permanently


def outcome(n: int) -> JobState:
    return JobState.DEAD if n % 50 == 7 or n % 25 == 4 else JobState.SUCCEEDED


# -- the worker process ---------------------------------------------------------------


def run_worker(schema: str, ledger_path: str, name: str) -> None:
    """Lease, run and report jobs until no job is left unfinished."""
    driver = PostgresDriver(POSTGRES_URL, schema=schema)
    with open(ledger_path, "w") as ledger:
        while True:
            jobs = driver.lease(["default"], 50, LEASE_SECONDS, name)
            if not jobs:
                driver.promote()
                driver.rescue()
                if not any(state in UNFINISHED for _, state in driver.count()):
                    break
                driver.wait_for_jobs(["default"], 0.2)
                continue
            completions: list[Completion] = []
            failures: list[Failure] = []
            for job in jobs:
                n, token = job.args[0], job.lease_token or ""
                start = time.monotonic_ns()
                if job.attempt == 1 and abandoned_at_first(n):
                    pass  # crashed: no report; the lease will expire
                elif outcome(n) is JobState.DEAD or job.attempt < attempts_needed(n):
                    error = ErrorReport("RuntimeError", f"job {n} attempt {job.attempt}")
                    failures.append(Failure(job.id, token, error, permanent=n % 25 == 4))
                else:
                    completions.append(Completion(job.id, token, n))
                run = {"job": job.id, "attempt": job.attempt, "token": token, "worker": name}
                ledger.write(json.dumps({**run, "start": start, "end": time.monotonic_ns()}))
                ledger.write("\n")
            ledger.flush()
            lost = (driver.complete(completions) if completions else []) + (
                driver.fail(failures) if failures else []
            )
            assert lost == [], lost
    driver.close()


# -- the test ---------------------------------------------------------------------------


def read_ledgers(paths: list[Path]) -> dict[int, list[dict[str, int | str]]]:
    runs: dict[int, list[dict[str, int | str]]] = defaultdict(list)
    for path in paths:
        for line in path.read_text().splitlines():
            run = json.loads(line)
            runs[run["job"]].append(run)
    return runs


def test_four_processes_lose_no_job_and_never_run_one_twice_at_once(
    make_driver: MakeDriver, tmp_path: Path
) -> None:
    driver = make_driver()
    schema = driver._tables.schema
    numbers = {}
    for start in range(0, JOBS, 2_500):
        batch = [
            EnqueueRequest("work", args=(n,), max_attempts=MAX_ATTEMPTS)
            for n in range(start, start + 2_500)
        ]
        for result in driver.enqueue(batch):
            numbers[result.job.id] = result.job.args[0]

    ledgers = [tmp_path / f"ledger-{index}.jsonl" for index in range(WORKERS)]
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "worker", schema, str(ledger), f"worker-{index}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for index, ledger in enumerate(ledgers)
    ]
    for worker in workers:
        _, errors = worker.communicate(timeout=240)
        assert worker.returncode == 0, errors

    jobs = driver.list_jobs(JobFilter(limit=JOBS + 1))
    assert len(jobs) == JOBS
    runs = read_ledgers(ledgers)
    assert set(runs) == set(numbers), "every job ran, and only jobs that were enqueued"
    for job in jobs:
        n = numbers[job.id]
        assert job.state is outcome(n), f"job {job.id} (n={n})"
        assert job.attempt == attempts_needed(n)
        history = sorted(runs[job.id], key=lambda run: run["start"])
        assert [run["attempt"] for run in history] == list(range(1, job.attempt + 1))
        assert len({run["token"] for run in history}) == len(history)
        for earlier, later in itertools.pairwise(history):
            assert earlier["end"] <= later["start"], f"job {job.id} ran twice at once"
        assert len(job.errors) == job.attempt - (job.state is JobState.SUCCEEDED)
    assert {run["worker"] for history in runs.values() for run in history} == {
        f"worker-{index}" for index in range(WORKERS)
    }


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    run_worker(*sys.argv[2:5])
