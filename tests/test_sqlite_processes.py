"""The SQLite store shared by several worker processes, and a worker killed mid-batch.

The workers are this file run as a script (``python test_sqlite_processes.py
worker ...``), so they use the driver SPI exactly as a separate program would.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import IO

from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.spec import (
    FINISHED_JOB_STATES,
    Completion,
    EnqueueRequest,
    ErrorReport,
    Failure,
    FakeClock,
    JobFilter,
    JobRecord,
    JobState,
    LeaseLost,
    SystemClock,
)

JOBS = 2_000
MAX_ATTEMPTS = 3
UNFINISHED = frozenset(JobState) - FINISHED_JOB_STATES


# -- the work plan: which jobs fail, and how ------------------------------------


def attempts_needed(n: int) -> int:
    """How many attempts job number ``n`` takes (its outcome is in :func:`outcome`)."""
    if n % 50 == 7:
        return MAX_ATTEMPTS  # fails every time: dead once attempts are exhausted
    if n % 10 == 3:
        return 2  # fails once, then succeeds on the retry
    return 1  # succeeds at once, or (n % 25 == 4) fails permanently


def outcome(n: int) -> JobState:
    if n % 50 == 7 or n % 25 == 4:
        return JobState.DEAD
    return JobState.SUCCEEDED


def should_fail(n: int, attempt: int) -> bool:
    return outcome(n) == JobState.DEAD or attempt < attempts_needed(n)


# -- the worker process -------------------------------------------------------------


def run_worker(path: str, ledger_path: str, name: str) -> None:
    """Lease, "run" and report jobs until none is left unfinished.

    Each run is written to this worker's ledger as a start and an end line,
    with a system-wide monotonic time, so the test can tell whether two
    processes ever ran the same job at once.
    """
    driver = SQLiteDriver(path, clock=SystemClock())
    print("ready", flush=True)
    sys.stdin.readline()  # wait until every worker is ready
    with open(ledger_path, "w") as ledger:
        while True:
            jobs = driver.lease(["default"], 10, 30.0, name)
            if not jobs:
                driver.promote()
                if not any(state in UNFINISHED for _, state in driver.count()):
                    break
                time.sleep(0.002)
                continue
            report(driver, jobs, ledger)
    driver.close()


def report(driver: SQLiteDriver, jobs: list[JobRecord], ledger: IO[str]) -> None:
    completions: list[Completion] = []
    failures: list[Failure] = []
    for job in jobs:
        (n,) = job.args
        ledger.write(json.dumps(["start", job.id, job.attempt, time.monotonic_ns()]) + "\n")
        if should_fail(n, job.attempt):
            error = ErrorReport("RuntimeError", f"job {n} attempt {job.attempt}")
            permanent = n % 25 == 4
            failures.append(Failure(job.id, job.lease_token or "", error, permanent=permanent))
        else:
            completions.append(Completion(job.id, job.lease_token or "", n * 2))
        ledger.write(json.dumps(["end", job.id, job.attempt, time.monotonic_ns()]) + "\n")
    lost = (driver.complete(completions) if completions else []) + (
        driver.fail(failures) if failures else []
    )
    if lost:
        raise SystemExit(f"leases lost although none expired: {lost}")


def run_doomed_worker(path: str) -> None:
    """Lease one batch, then complete it one job at a time until killed.

    Prints each leased job's id and token, then a line per completed job.
    """
    driver = SQLiteDriver(path, clock=SystemClock())
    jobs = driver.lease(["default"], 50, 30.0, "doomed")
    for job in jobs:
        print("leased", job.id, job.lease_token, flush=True)
    for job in jobs:
        driver.complete([Completion(job.id, job.lease_token or "", "done")])
        print("completed", job.id, flush=True)
        time.sleep(0.005)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


# -- the tests ------------------------------------------------------------------------


def test_three_processes_run_every_job_exactly_as_planned(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    driver = SQLiteDriver(path)
    requests = [EnqueueRequest("work", (n,), max_attempts=MAX_ATTEMPTS) for n in range(JOBS)]
    enqueued = {result.job.id: result.job.args[0] for result in driver.enqueue(requests)}

    workers = [spawn("worker", str(path), str(tmp_path / f"ledger-{i}"), f"w{i}") for i in range(3)]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    for worker in workers:
        assert worker.wait(timeout=120) == 0

    runs: dict[int, list[tuple[int, int, int, str]]] = defaultdict(list)
    for i in range(3):
        started: dict[tuple[int, int], int] = {}
        for line in (tmp_path / f"ledger-{i}").read_text().splitlines():
            kind, job_id, attempt, at = json.loads(line)
            if kind == "start":
                started[job_id, attempt] = at
            else:
                runs[job_id].append((started.pop((job_id, attempt)), at, attempt, f"w{i}"))
        assert not started, f"worker w{i} started runs it never ended: {started}"
    # The processes really ran side by side.  (Not necessarily all three: SQLite's
    # busy handler is not fair, and on a loaded machine one process can find
    # the write lock taken at every try until the others have drained the queue.)
    assert len({name for job_runs in runs.values() for *_, name in job_runs}) >= 2

    jobs = driver.list_jobs(JobFilter(limit=JOBS))
    assert sorted(job.id for job in jobs) == sorted(enqueued) == sorted(runs)
    for job in jobs:
        n = enqueued[job.id]
        job_runs = sorted(runs[job.id])
        assert [attempt for _, _, attempt, _ in job_runs] == list(
            range(1, attempts_needed(n) + 1)
        ), f"job {job.id} (n={n}) ran {job_runs}"
        for (_, end, _, _), (start, _, _, _) in itertools.pairwise(job_runs):
            assert end < start, f"job {job.id} ran twice at once: {job_runs}"
        assert job.state == outcome(n)
        assert job.attempt == attempts_needed(n)
        assert len(job.errors) == attempts_needed(n) - (job.state == JobState.SUCCEEDED)
        assert job.result == (n * 2 if job.state == JobState.SUCCEEDED else None)
    driver.close()


def test_a_worker_killed_mid_batch_leaves_a_consistent_store_and_its_jobs_are_rescued(
    tmp_path: Path,
) -> None:
    path = tmp_path / "crash.db"
    setup = SQLiteDriver(path)
    setup.enqueue([EnqueueRequest("work", (n,)) for n in range(200)])
    setup.close()

    doomed = spawn("doomed", str(path))
    assert doomed.stdout is not None
    tokens: dict[int, str] = {}
    completed = 0
    while completed < 5:
        kind, job_id, *rest = doomed.stdout.readline().split()
        if kind == "leased":
            tokens[int(job_id)] = rest[0]
        else:
            completed += 1
    os.kill(doomed.pid, signal.SIGKILL)
    assert doomed.wait(timeout=10) == -signal.SIGKILL

    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # Far enough in the future that the dead worker's leases have expired.
    clock = FakeClock(SystemClock().now() + timedelta(hours=1))
    driver = SQLiteDriver(path, clock=clock)
    by_state = {job.id: job for job in driver.get(sorted(tokens))}
    stranded = sorted(i for i, job in by_state.items() if job.state == JobState.RUNNING)
    finished = sorted(i for i, job in by_state.items() if job.state == JobState.SUCCEEDED)
    assert len(tokens) == 50 and len(finished) >= 5 and stranded
    assert sorted(stranded + finished) == sorted(tokens)
    assert all(by_state[i].result == "done" and by_state[i].finished_at for i in finished)

    assert driver.rescue() == stranded
    for job in driver.get(stranded):
        assert job.state == JobState.RETRYING and job.lease_token is None
        assert [error.type for error in job.errors] == ["LeaseExpired"]
    late = driver.complete([Completion(i, tokens[i], "late") for i in stranded])
    assert late == [LeaseLost.stale(i, tokens[i], JobState.RETRYING) for i in stranded]
    clock.set(max(job.run_at for job in driver.get(stranded)))  # past their retry delays
    assert driver.promote().promoted == len(stranded)

    while jobs := driver.lease(["default"], 100, 30.0, "survivor"):
        assert (
            driver.complete([Completion(job.id, job.lease_token or "", "done") for job in jobs])
            == []
        )
    assert driver.count() == {("default", JobState.SUCCEEDED): 200}
    driver.close()


if __name__ == "__main__":
    role, *arguments = sys.argv[1:]
    if role == "worker":
        run_worker(*arguments)
    else:
        run_doomed_worker(*arguments)
