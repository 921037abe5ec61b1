"""Waiting for a job to finish on PostgreSQL, notified against polled, and what the
finished-job notices cost the processing figure; both side by side in one run.

Run: ``make bench``, or ``.venv/bin/python tests/bench/bench_wait.py [--scale F]``.

* **Wait latency.**  For each of ``SAMPLES`` jobs a thread calls ``app.wait(job)``;
  once it has begun waiting (``SETTLE`` s), this thread leases and completes the
  job through the driver.  The figure is the time from ``complete``'s return to
  the waiter's.  On a store opened with notifications, the waiter sleeps in
  ``wait_for_finished`` until the finished notice; on one opened with
  ``notifications=False`` it polls every 50 ms (``App.wait``'s default).
* **Processing.**  One thread leases ``BATCH`` jobs and completes them, until a
  queue of ``JOBS`` no-ops is empty (a worker's store calls, as the raw SQL
  limit of ``make bench`` measures them), on a store with notifications and on
  one without, a batch on each in turn (so both see the same neighbours on a
  shared machine), ``ROUNDS`` times: on that path the only difference is the
  one finished notice each ``complete`` call sends.

It is a measurement, not a test: it checks only that every job succeeded.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from common import BULK_BATCH, POSTGRES_URL, scratch_schema
from rich.console import Console
from rich.table import Table

import taskharbor as th
from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.spec import Completion, JobState

SAMPLES = 60
SETTLE = 0.03
JOBS = 10_000
ROUNDS = 3
BATCH = 50


@contextmanager
def opened(url: str, notifications: bool) -> Iterator[th.App]:
    """An app on a fresh schema of ``url``, its store opened with or without notifications."""
    with scratch_schema(url) as schema:
        driver = PostgresDriver(url, schema=schema, notifications=notifications)
        driver.migrate()
        with th.App(driver=driver) as app:
            yield app


def wait_latencies(url: str, notifications: bool, samples: int) -> list[float]:
    """Milliseconds from a job's completion to its waiter's return, ``samples`` times."""
    with opened(url, notifications) as app:
        noop = app.task(name="bench.noop")(lambda: None)
        return [one_wait(app, noop.enqueue()) for _ in range(samples)]


def one_wait(app: th.App, job: th.Job) -> float:
    """Wait for ``job`` in a thread, complete it here; milliseconds until the waiter returned."""
    returned: list[float] = []

    def wait() -> None:
        app.wait(job, timeout=30)
        returned.append(time.perf_counter())

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(SETTLE)
    (leased,) = app.driver.lease(["default"], 1, 30.0, "bench")
    assert leased.lease_token is not None
    assert app.driver.complete([Completion(leased.id, leased.lease_token, None)]) == []
    finished = time.perf_counter()
    waiter.join()
    return (returned[0] - finished) * 1000


def processing(url: str, jobs: int) -> dict[bool, float]:
    """Jobs per second leased and completed in batches of ``BATCH``, on a store with
    notifications (True) and one without (False), one batch on each in turn."""
    with ExitStack() as stack:
        apps = {flag: stack.enter_context(opened(url, flag)) for flag in (False, True)}
        for app in apps.values():
            noop = app.task(name="bench.noop")(lambda: None)
            for first in range(0, jobs, BULK_BATCH):
                app.enqueue_many(noop.s() for _ in range(min(BULK_BATCH, jobs - first)))
        spent = {False: 0.0, True: 0.0}
        for turn in itertools.count():
            order = (False, True) if turn % 2 else (True, False)  # neither always goes first
            for flag in order:
                driver = apps[flag].driver
                started = time.perf_counter()
                leased = driver.lease(["default"], BATCH, 30.0, "bench")
                done = [Completion(job.id, job.lease_token or "", None) for job in leased]
                assert not done or driver.complete(done) == []
                spent[flag] += time.perf_counter() - started
            if not leased:
                break
        for app in apps.values():
            succeeded = app.stats()["default"][JobState.SUCCEEDED]
            if succeeded != jobs:
                raise RuntimeError(f"{jobs - succeeded} of {jobs} jobs were not processed")
        return {flag: jobs / seconds for flag, seconds in spent.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    scale = parser.parse_args(argv).scale
    samples, jobs = max(5, int(SAMPLES * scale)), max(500, int(JOBS * scale))
    console = Console()

    waits = {flag: wait_latencies(POSTGRES_URL, flag, samples) for flag in (False, True)}
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(ROUNDS):
        for flag, rate in processing(POSTGRES_URL, jobs).items():
            rates[flag].append(rate)

    table = Table(
        title=f"PostgreSQL: wait for a finished job ({samples} jobs), processing ({jobs} jobs)"
    )
    for column in ("store", "wait p50 (ms)", "wait max (ms)", "lease+complete (jobs/s, median)"):
        table.add_column(column, justify="right")
    for flag, name in ((False, "polled (notifications=False)"), (True, "notified")):
        table.add_row(
            name,
            f"{statistics.median(waits[flag]):.2f}",
            f"{max(waits[flag]):.2f}",
            f"{statistics.median(rates[flag]):,.0f}",
        )
    console.print(table)
    ratio = statistics.median(rates[True]) / statistics.median(rates[False])
    speedup = statistics.median(waits[False]) / statistics.median(waits[True])
    console.print(f"processing with finished notices / without: {ratio:.3f}")
    rounds = {flag: [round(rate) for rate in rates[flag]] for flag in rates}
    console.print(f"rounds (jobs/s): without {rounds[False]}, with {rounds[True]}")
    console.print(f"wait latency p50, polled / notified: {speedup:.1f}x")


if __name__ == "__main__":
    main()
