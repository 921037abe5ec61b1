"""Throughput and wake-up latency of the PostgreSQL driver, on the SPI directly.

Run: ``.venv/bin/python tests/bench/bench_postgres.py [--url URL] [--jobs N] [--json PATH]``
(the URL defaults to ``$TASKHARBOR_TEST_POSTGRES`` or the test database).
It measures, for no-op jobs on a fresh schema (dropped afterwards):

* enqueue, one job per call, and bulk enqueue (one call per batch);
* processing by one thread: lease a batch, complete it, repeat;
* enqueue-to-start latency with an idle worker woken by LISTEN/NOTIFY:
  a worker thread waits in ``wait_for_jobs`` and leases; the producer
  enqueues one job at a time, stamped with ``perf_counter``.

It is a measurement, not a test: it asserts only that every job was
processed, prints a table, and writes the figures as JSON when asked.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.spec import Completion, EnqueueRequest, JobState

DEFAULT_URL = os.environ.get("TASKHARBOR_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
BATCH = 1_000
"""Jobs per call for bulk enqueue."""
LEASE_BATCH = 50
"""Jobs per lease (and per completion call) when processing."""


class Store:
    """A driver on a fresh schema, dropped on exit."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.schema = f"th_bench_{uuid.uuid4().hex[:10]}"
        self.driver = PostgresDriver(url, schema=self.schema, pool_size=4)
        self.driver.migrate()

    def __enter__(self) -> PostgresDriver:
        return self.driver

    def __exit__(self, *exc: object) -> None:
        self.driver.close()
        with psycopg.connect(self.url, autocommit=True) as conn:
            drop = sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self.schema))
            conn.execute(drop)


def enqueue_single(driver: PostgresDriver, n: int) -> float:
    started = time.perf_counter()
    for index in range(n):
        driver.enqueue([EnqueueRequest("noop", (index,))])
    return n / (time.perf_counter() - started)


def enqueue_bulk(driver: PostgresDriver, n: int) -> float:
    started = time.perf_counter()
    for first in range(0, n, BATCH):
        driver.enqueue([EnqueueRequest("noop", (i,)) for i in range(first, min(n, first + BATCH))])
    return n / (time.perf_counter() - started)


def process(driver: PostgresDriver, n: int) -> float:
    """Lease and complete ``n`` jobs enqueued beforehand (the enqueue is not timed)."""
    enqueue_bulk(driver, n)
    started = time.perf_counter()
    done = 0
    while jobs := driver.lease(["default"], LEASE_BATCH, 30.0, "bench"):
        driver.complete([Completion(job.id, job.lease_token or "", None) for job in jobs])
        done += len(jobs)
    elapsed = time.perf_counter() - started
    assert driver.count() == {("default", JobState.SUCCEEDED): n}
    return done / elapsed


def wake_latencies(driver: PostgresDriver, samples: int) -> list[float]:
    """Seconds from enqueue to lease, one job at a time, the worker idle before each."""
    latencies: list[float] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            jobs = driver.lease(["latency"], 10, 30.0, "bench")
            if not jobs:
                driver.wait_for_jobs(["latency"], 1.0)
                continue
            now = time.perf_counter()
            latencies.extend(now - job.args[0] for job in jobs)
            driver.complete([Completion(job.id, job.lease_token or "", None) for job in jobs])

    thread = threading.Thread(target=worker)
    thread.start()
    driver.wait_for_jobs(["latency"], 0.01)  # start the listener before measuring
    for _ in range(samples):
        time.sleep(0.02)  # let the worker go idle
        driver.enqueue([EnqueueRequest("noop", (time.perf_counter(),), queue="latency")])
    deadline = time.monotonic() + 10
    while len(latencies) < samples and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join()
    assert len(latencies) == samples, f"{samples - len(latencies)} jobs never started"
    return latencies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL conninfo or URL")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per bulk workload")
    parser.add_argument("--single", type=int, default=1_000, help="jobs enqueued one per call")
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    rates: list[tuple[str, int, Callable[[PostgresDriver, int], float]]] = [
        ("enqueue, 1 job per call", args.single, enqueue_single),
        (f"enqueue, {BATCH} jobs per call", args.jobs, enqueue_bulk),
        (f"process: lease {LEASE_BATCH} + complete {LEASE_BATCH}", args.jobs, process),
    ]
    figures: dict[str, float] = {}
    table = Table(title="PostgreSQL driver, no-op jobs, one process")
    for column in ("workload", "jobs", "result"):
        table.add_column(column, justify="left" if column == "workload" else "right")
    for name, n, workload in rates:
        with Store(args.url) as driver:
            rate = workload(driver, n)
        figures[name] = rate
        table.add_row(name, f"{n:,}", f"{rate:,.0f} jobs/s")
    with Store(args.url) as driver:
        latencies = sorted(wake_latencies(driver, args.samples))
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    figures["enqueue->start p50 ms"] = p50
    figures["enqueue->start p99 ms"] = p99
    table.add_row("enqueue -> start (LISTEN/NOTIFY), p50", f"{args.samples:,}", f"{p50:.2f} ms")
    table.add_row("enqueue -> start (LISTEN/NOTIFY), p99", f"{args.samples:,}", f"{p99:.2f} ms")
    Console().print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
