"""Per-tick overhead of periodic schedules: ticks enqueued per second with 8 workers all
scheduling, as a ratio to plain enqueue of the same jobs.

Run: ``make bench``, or ``.venv/bin/python tests/bench/bench_periodic.py [--scale F]``.

``SCHEDULES`` schedules tick every second.  Each round moves a shared
:class:`~taskharbor.spec.FakeClock` one second on, then 8 workers (threads,
each with its own driver: its own connection or file handle) all call
``enqueue_due_ticks`` for every schedule at once, as the workers' maintenance
passes do; the store gives each tick to one of them (the others find it done).
The baseline enqueues the same number of jobs, with idempotency keys as ticks
carry them, as ``enqueue`` batches of ``SCHEDULES`` jobs from the same 8
threads.  It is a measurement, not a test: it checks only that every tick
made exactly one job.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from common import POSTGRES_URL, scratch_schema
from rich.console import Console
from rich.table import Table

from taskharbor.spec import Driver, EnqueueRequest, FakeClock, JobFilter
from taskharbor.spec.schedules import Schedule

WORKERS = 8
SCHEDULES = 100
ROUNDS = {"memory": 200, "sqlite": 40, "postgres": 40}

Factory = Callable[[FakeClock], Driver]


def schedules() -> list[Schedule]:
    request = EnqueueRequest("bench.tick", queue="periodic")
    return [
        Schedule(f"tick-{n:03d}", request, every=1, missed="all", catch_up=10)
        for n in range(SCHEDULES)
    ]


def in_threads(work: Callable[[int], None]) -> float:
    """Run ``work(index)`` on ``WORKERS`` threads at once; the seconds until all are done."""
    threads = [threading.Thread(target=work, args=(index,)) for index in range(WORKERS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def tick_rate(make: Factory, rounds: int) -> float:
    """Ticks enqueued per second, every worker asking every round."""
    clock = FakeClock()
    drivers = [make(clock) for _ in range(WORKERS)]
    try:
        drivers[0].migrate()
        drivers[0].sync_schedules(schedules())
        names = [schedule.name for schedule in schedules()]
        gate = threading.Barrier(WORKERS, action=lambda: clock.advance(1.0))

        def work(index: int) -> None:
            for _ in range(rounds):
                gate.wait()
                drivers[index].enqueue_due_ticks(names)

        elapsed = in_threads(work)
        made = len(drivers[0].list_jobs(JobFilter(limit=100_000)))
        assert made == SCHEDULES * rounds, f"{made} jobs for {SCHEDULES * rounds} ticks"
        return made / elapsed
    finally:
        for driver in drivers:
            driver.close()


def enqueue_rate(make: Factory, rounds: int) -> float:
    """The same jobs by plain keyed ``enqueue`` batches from the same threads."""
    clock = FakeClock()
    drivers = [make(clock) for _ in range(WORKERS)]
    try:
        drivers[0].migrate()

        def work(index: int) -> None:
            for batch in range(index, rounds, WORKERS):
                drivers[index].enqueue(
                    [
                        EnqueueRequest(
                            "bench.tick", queue="periodic", idempotency_key=f"{batch}-{n}"
                        )
                        for n in range(SCHEDULES)
                    ]
                )

        elapsed = in_threads(work)
        return SCHEDULES * rounds / elapsed
    finally:
        for driver in drivers:
            driver.close()


@contextmanager
def memory() -> Iterator[Factory]:
    from taskharbor.drivers.memory import MemoryDriver

    shared: list[MemoryDriver] = []

    def make(clock: FakeClock) -> Driver:
        if not shared:  # one store per measurement, shared by its workers (one process)
            shared.append(MemoryDriver(clock=clock))
        return shared[0]

    yield make


@contextmanager
def sqlite(folder: Path) -> Iterator[Factory]:
    from taskharbor.drivers.sqlite import SQLiteDriver

    path = folder / f"bench-{uuid.uuid4().hex[:8]}.db"

    def make(clock: FakeClock) -> Driver:
        return SQLiteDriver(path, clock=clock)

    yield make


@contextmanager
def postgres(url: str) -> Iterator[Factory]:
    from taskharbor.drivers.postgres import PostgresDriver

    with scratch_schema(url) as schema:

        def make(clock: FakeClock) -> Driver:
            return PostgresDriver(url, schema=schema, clock=clock, notifications=False, pool_size=1)

        yield make


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=POSTGRES_URL, help="PostgreSQL URL (a scratch server)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every round count")
    args = parser.parse_args(argv)
    table = Table(title=f"periodic ticks, {WORKERS} workers all scheduling, {SCHEDULES} schedules")
    for column in ("store", "ticks/s", "plain enqueue jobs/s", "ratio"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as folder:
        stores = {
            "memory": lambda: memory(),
            "sqlite": lambda: sqlite(Path(folder)),
            "postgres": lambda: postgres(args.url),
        }
        for name, store in stores.items():
            rounds = max(2, int(ROUNDS[name] * args.scale))
            with store() as make:
                ticks = tick_rate(make, rounds)
            with store() as make:
                plain = enqueue_rate(make, rounds)
            table.add_row(name, f"{ticks:,.0f}", f"{plain:,.0f}", f"{ticks / plain:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
