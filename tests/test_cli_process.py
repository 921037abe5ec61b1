"""The installed ``taskharbor`` script, run as a separate process on a SQLite file,
as an operator runs it: a worker stopped by SIGTERM, and a store read by URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "taskharbor"

PROJECT = """
import pathlib
import time

from taskharbor.app import App

app = App("sqlite:///store.db")


@app.task(name="project.slow")
def slow(seconds: float) -> str:
    pathlib.Path("started").touch()
    time.sleep(seconds)
    return "done"
"""


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=60
    )


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TASKHARBOR_")}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "project.py").write_text(PROJECT)
    return tmp_path


def wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


@pytest.mark.timing
def test_worker_drains_its_running_job_on_sigterm_and_exits_0(project: Path) -> None:
    enqueue = "from project import slow; print(slow.enqueue(1.0).id)"
    job_id = subprocess.run(
        [sys.executable, "-c", enqueue], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()
    worker = subprocess.Popen(
        [str(SCRIPT), "--app", "project:app", "worker", "--concurrency", "1"],
        cwd=project,
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(project / "started", timeout=30)
        worker.send_signal(signal.SIGTERM)
        _, log = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, log
    assert "got SIGTERM" in log
    assert f"job {job_id} project.slow attempt 1/3 -> succeeded" in log
    shown = run(project, "--url", "sqlite:///store.db", "jobs", "show", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["result"] == "done"


def test_reading_a_store_by_url_and_failing_cleanly(project: Path) -> None:
    enqueue = "from project import slow; slow.enqueue(0); slow.enqueue(1)"
    subprocess.run([sys.executable, "-c", enqueue], cwd=project, check=True)
    listed = run(project, "--url", "sqlite:///store.db", "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [job["args"] for job in json.loads(listed.stdout)["jobs"]] == [[0], [1]]
    missing = run(project, "--url", "sqlite:///store.db", "jobs", "show", "404")
    assert missing.returncode == 1
    assert missing.stderr == "Error: job 404 not found (never enqueued, or pruned)\n"
    assert missing.stdout == ""
    bad_state = run(project, "--app", "project:app", "jobs", "list", "--state", "asleep")
    assert bad_state.returncode == 2
    assert len(bad_state.stderr.splitlines()) == 1 and "'asleep' is not one of" in bad_state.stderr
