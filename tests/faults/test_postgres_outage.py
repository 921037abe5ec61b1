"""PostgreSQL restarted and connections killed under running workers: they reconnect.

Three worker processes run jobs while the test restarts the server
(``pg_ctlcluster ... restart``) and terminates the workers' connections
(``pg_terminate_backend``, chosen by the ``application_name`` this test's
connection string sets, so other users of the server are left alone).  The
workers log the errors, back off, reconnect and carry on: every job ends
succeeded with the ledger check passing, and afterwards a new job is picked
up through LISTEN/NOTIFY, not by polling (the workers poll only every 5 s).

Restarting the server interrupts every session on it, also other tests
running at the same moment; the short form restarts it once.
"""

from __future__ import annotations

import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import fault_table
import psycopg
import pytest
from fault_fleet import Fleet, fresh_store, read_ledger
from fault_ledger import check_ledger
from fault_profile import SEEDS, scaled
from fault_worker import make_app

import taskharbor as th
from driver_registry import POSTGRES_URL

pytestmark = pytest.mark.postgres

JOBS = scaled(60, 300)
RESTARTS = scaled(1, 2)
TERMINATIONS = scaled(2, 4)
WORKER = {"lease": 3.0, "poll_interval": 5.0}
"""A lease that outlives a restart, and polling too slow to hide a dead LISTEN."""
NOTIFY_PICKUP = WORKER["poll_interval"] / 2
"""Seconds within which a notified worker starts a new job: half a poll interval."""
TIMEOUT = 180.0


def pg_ctl(action: str) -> None:
    clusters = sorted(Path("/etc/postgresql").iterdir())
    if not clusters:
        pytest.skip("no PostgreSQL cluster to restart under /etc/postgresql")
    version = clusters[-1].name
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=120,
    )


def wait_for_server(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(POSTGRES_URL, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def server_kept_running() -> Iterator[None]:
    """Whatever happens in the block, the server is up again afterwards."""
    try:
        yield
    finally:
        try:
            wait_for_server(timeout=10)
        except psycopg.OperationalError:
            pg_ctl("start")
            wait_for_server()


def terminate_connections(application: str) -> int:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application,),
        ).fetchall()
    return len(rows)


def read_jobs(app: th.App, jobs: list[th.Job]) -> list[th.Job]:
    """The jobs as stored now, read again if a restart broke the test's own connection."""
    for _ in range(100):
        try:
            return [app.get_job(job) for job in jobs]
        except psycopg.OperationalError:
            time.sleep(0.2)
    raise AssertionError("the test cannot read the store any more")


@pytest.mark.parametrize("seed", SEEDS)
def test_workers_ride_out_restarts_and_killed_connections(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.jsonl"
    application = f"th_fault_{uuid.uuid4().hex[:8]}"
    with fresh_store("postgres", tmp_path) as plain, server_kept_running():
        sep = "&" if "?" in plain.location else "?"
        store = replace(plain, location=f"{plain.location}{sep}application_name={application}")
        app, work = make_app(plain, ledger)  # the test's own connections are not terminated
        jobs = [work.enqueue(n, rng.uniform(0.1, 0.4)) for n in range(JOBS)]
        with Fleet(store, ledger) as fleet:
            fleet.start(3, **WORKER)
            fleet.wait_started()
            faults = ["restart"] * RESTARTS + ["terminate"] * TERMINATIONS
            rng.shuffle(faults)
            for fault in faults:
                time.sleep(rng.uniform(0.3, 1.0))
                if fault == "restart":
                    pg_ctl("restart")
                else:
                    assert terminate_connections(application) > 0
            deadline = time.monotonic() + TIMEOUT
            while not all(job.finished for job in read_jobs(app, jobs)):
                assert time.monotonic() < deadline, f"jobs left unfinished; see {fleet.logs()}"
                fleet.check_alive()
                time.sleep(0.2)
            time.sleep(1.0)  # every worker back in its idle wait
            enqueued = time.monotonic()
            late = work.enqueue(JOBS, 0.0)
            while not read_jobs(app, [late])[0].finished:
                assert time.monotonic() - enqueued < TIMEOUT, f"see {fleet.logs()}"
                time.sleep(0.05)
            fleet.stop()
            entries = read_ledger(ledger)
            finished = read_jobs(app, jobs)
            figures = check_ledger(finished, entries, fleet.kills)
        app.close()
    fault_table.record(figures.row(f"PostgreSQL outages (seed {seed})", JOBS, len(faults)))
    assert (figures.lost, figures.double_transitions) == (0, 0)
    [pickup] = [e["t"] for e in entries if e["job"] == late.id and e["event"] == "start"]
    assert pickup - enqueued < NOTIFY_PICKUP, "the new job waited for polling: LISTEN is dead"
