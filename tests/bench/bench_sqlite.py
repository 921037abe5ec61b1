"""Throughput of the SQLite driver, with the memory driver as the same-run baseline.

Run: ``.venv/bin/python tests/bench/bench_sqlite.py [--jobs N]``.  It measures,
for no-op jobs: enqueue one job per call, enqueue in batches, and processing
(lease a batch, complete it).  It is a measurement, not a test: it asserts
only that every job was processed, and prints a table with the ratio of each
SQLite figure to the memory driver's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from taskharbor.drivers.memory import MemoryDriver
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.spec import Completion, Driver, EnqueueRequest, JobState

BATCH = 500
"""Jobs per call for bulk enqueue, and per lease when processing."""

Measure = Callable[[Driver, int], int]
"""Runs one workload of ``n`` jobs on a fresh store; returns how many jobs it handled."""


def enqueue_single(driver: Driver, n: int) -> int:
    for index in range(n):
        driver.enqueue([EnqueueRequest("noop", (index,))])
    return n


def enqueue_bulk(driver: Driver, n: int) -> int:
    for start in range(0, n, BATCH):
        driver.enqueue([EnqueueRequest("noop", (i,)) for i in range(start, min(n, start + BATCH))])
    return n


def process(driver: Driver, n: int) -> int:
    """Lease and complete ``n`` no-op jobs enqueued beforehand (setup is not timed)."""
    done = 0
    while jobs := driver.lease(["default"], BATCH, 30.0, "bench"):
        driver.complete([Completion(job.id, job.lease_token or "", None) for job in jobs])
        done += len(jobs)
    assert driver.count() == {("default", JobState.SUCCEEDED): n}
    return done


def timed(make: Callable[[], Driver], workload: Measure, n: int) -> float:
    """Jobs per second of ``workload`` on a fresh store."""
    driver = make()
    try:
        if workload is process:
            enqueue_bulk(driver, n)
        started = time.perf_counter()
        handled = workload(driver, n)
        elapsed = time.perf_counter() - started
    finally:
        driver.close()
    return handled / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per bulk workload")
    parser.add_argument("--single", type=int, default=1_000, help="jobs enqueued one per call")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="taskharbor-bench-") as folder:
        stores = iter(range(1_000_000))

        def sqlite() -> Driver:
            return SQLiteDriver(Path(folder) / f"bench-{next(stores)}.db")

        workloads: list[tuple[str, Measure, int]] = [
            ("enqueue, 1 job per call", enqueue_single, args.single),
            (f"enqueue, {BATCH} jobs per call", enqueue_bulk, args.jobs),
            (f"lease {BATCH} + complete {BATCH}", process, args.jobs),
        ]
        table = Table(title="No-op jobs per second (SQLite: WAL, synchronous=FULL)")
        for column in ("workload", "jobs", "memory", "sqlite", "sqlite / memory"):
            table.add_column(column, justify="left" if column == "workload" else "right")
        for name, workload, n in workloads:
            memory_rate = timed(MemoryDriver, workload, n)
            sqlite_rate = timed(sqlite, workload, n)
            table.add_row(
                name,
                f"{n:,}",
                f"{memory_rate:,.0f}",
                f"{sqlite_rate:,.0f}",
                f"{sqlite_rate / memory_rate:.3f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
