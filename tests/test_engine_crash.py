"""A worker process killed mid-job, and one stopped with SIGTERM, on the SQLite store.

The worker runs in a child process built from a small module written to the
test's directory; the test process shares the store through the same file.
Handlers only sleep in the child (``CRASH_TEST_CHILD`` is set there), so the
recovering worker in the test process finishes the jobs at once.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from test_engine_support import EVENTUALLY, eventually, running_worker

import taskharbor as th
from taskharbor.spec import JobState

pytestmark = pytest.mark.timing

CHILD_APP = """
import logging, os, sys, time
import taskharbor as th

app = th.App({url!r})

@app.task(name="crash.work", max_attempts=3)
def work(n: int, seconds: float) -> int:
    job = th.current_job()
    sys.stdout.write(f"started {{n}} attempt {{job.attempt}}\\n")  # one write: threads interleave
    sys.stdout.flush()
    if os.environ.get("CRASH_TEST_CHILD"):
        time.sleep(seconds)
    return n * 10

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    lease, shutdown = float(sys.argv[1]), float(sys.argv[2])
    th.Worker(app, concurrency=4, lease=lease, heartbeat_interval=0.1, poll_interval=0.05,
              maintenance_interval=0.05, shutdown_timeout=shutdown).run()
"""


def write_app(tmp_path: Path) -> tuple[Path, ModuleType]:
    path = tmp_path / "crash_app.py"
    path.write_text(CHILD_APP.format(url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    spec = importlib.util.spec_from_file_location(f"crash_app_{tmp_path.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def start_worker(path: Path, lease: float, shutdown: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(path), str(lease), str(shutdown)],
        env={**os.environ, "CRASH_TEST_CHILD": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lines(child: subprocess.Popen[str], count: int) -> list[str]:
    """Read the child's "started" lines until ``count`` handlers are running."""
    assert child.stdout is not None
    lines: list[str] = []
    while len(lines) < count:
        line = child.stdout.readline()
        if not line:
            _, stderr = child.communicate(timeout=5)
            pytest.fail(f"worker exited early: {stderr}")
        lines.append(line.strip())
    return lines


def test_a_killed_worker_loses_nothing(tmp_path: Path) -> None:
    path, module = write_app(tmp_path)
    app: th.App = module.app
    jobs = [module.work.enqueue(n, 60.0) for n in range(4)]
    child = start_worker(path, lease=1.0, shutdown=10.0)
    try:
        assert sorted(wait_for_lines(child, 4)) == [f"started {n} attempt 1" for n in range(4)]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=EVENTUALLY)
    finally:
        child.kill()
        child.communicate()
    assert all(app.get_job(job).state == JobState.RUNNING for job in jobs)
    with running_worker(app, lease=5.0):  # rescues the dead worker's leases once they expire
        eventually(lambda: all(app.get_job(j).finished for j in jobs), what="recovery")
    for n, job in enumerate(app.get_job(job) for job in jobs):
        assert (job.state, job.result, job.attempt) == (JobState.SUCCEEDED, n * 10, 2)
        assert [e.type for e in job.errors] == ["LeaseExpired"]  # the lost attempt is counted
    app.close()


STUCK_SECONDS = 60.0
"""How long a stuck job's handler sleeps: a stop that waited for it would take this long."""


def test_sigterm_drains_then_releases_what_is_still_running(tmp_path: Path) -> None:
    path, module = write_app(tmp_path)
    app: th.App = module.app
    quick = module.work.enqueue(1, 0.5)  # finishes well within the drain deadline
    stuck = module.work.enqueue(2, STUCK_SECONDS)  # does not: released, not lost
    child = start_worker(path, lease=30.0, shutdown=3.0)
    try:
        wait_for_lines(child, 2)
        child.send_signal(signal.SIGTERM)
        # The drain ends at its deadline, not when the stuck handler would.
        _, stderr = child.communicate(timeout=STUCK_SECONDS / 2)
    finally:
        child.kill()
    assert child.returncode == 0, stderr
    assert f"releases unfinished jobs [{stuck.id}]" in stderr
    done, released = app.get_job(quick), app.get_job(stuck)
    assert (done.state, done.result, done.attempt) == (JobState.SUCCEEDED, 10, 1)
    assert released.state in (JobState.SCHEDULED, JobState.AVAILABLE)
    assert (released.attempt, released.errors, released.leased_by) == (0, (), None)
    with running_worker(app):
        assert app.wait(stuck, timeout=EVENTUALLY).result == 20
    app.close()


def test_a_second_signal_releases_running_jobs_at_once(tmp_path: Path) -> None:
    path, module = write_app(tmp_path)
    app: th.App = module.app
    stuck = module.work.enqueue(3, STUCK_SECONDS)
    child = start_worker(path, lease=30.0, shutdown=STUCK_SECONDS)  # a drain of a minute
    try:
        wait_for_lines(child, 1)
        child.send_signal(signal.SIGINT)
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        # Released at once: neither the drain's deadline nor the handler is waited for.
        _, stderr = child.communicate(timeout=STUCK_SECONDS / 2)
    finally:
        child.kill()
    assert child.returncode == 0, stderr
    released = app.get_job(stuck)
    assert released.state in (JobState.SCHEDULED, JobState.AVAILABLE) and released.attempt == 0
    app.close()
