"""Lease throughput with a per-key concurrency limit over 1,000 keys, as a ratio to the
same jobs without limits, on each store in the same run (target: at least 0.5).

Run: ``make bench``, or ``.venv/bin/python tests/bench/bench_flow.py [--scale F]``.
Redis runs on a redis-server of the script's own (skipped without ``redis-server``).

``JOBS`` jobs are enqueued over ``KEYS`` keys (job ``n`` has key ``n % KEYS``, so
the keys take turns in lease order), each with ``key_concurrency=1``; then
``WORKERS`` threads, each with its own driver (its own connection or file handle),
lease batches of ``BATCH`` and complete them at once, until every job succeeded.
The baseline runs the same jobs enqueued without limits.  Figures are jobs leased
and completed per second.  It is a measurement, not a test: it checks only that
every job succeeded once.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from common import POSTGRES_URL, scratch_schema
from redis_server import private_server
from rich.console import Console
from rich.table import Table

from taskharbor.spec import Completion, Driver, EnqueueRequest, FlowLimits, JobState, SystemClock

WORKERS = 4
KEYS = 1_000
BATCH = 10
JOBS = {"memory": 20_000, "sqlite": 10_000, "postgres": 10_000, "redis": 10_000}
TARGET = 0.5

Factory = Callable[[], Driver]


def requests(count: int, limited: bool) -> list[EnqueueRequest]:
    return [
        EnqueueRequest(
            "bench.flow",
            args=(n,),
            flow=FlowLimits(key=f"key-{n % KEYS}", key_concurrency=1) if limited else None,
        )
        for n in range(count)
    ]


def lease_rate(make: Factory, count: int, limited: bool) -> float:
    """Jobs leased and completed per second by ``WORKERS`` threads."""
    drivers = [make() for _ in range(WORKERS)]
    try:
        drivers[0].migrate()
        batch = requests(count, limited)
        for start in range(0, count, 1_000):
            drivers[0].enqueue(batch[start : start + 1_000])
        done = [0] * WORKERS
        gate = threading.Barrier(WORKERS)

        def work(index: int) -> None:
            driver = drivers[index]
            gate.wait()
            while sum(done) < count:  # other workers' jobs may still free keys
                jobs = driver.lease(["default"], BATCH, 60.0, f"bench-{index}")
                if not jobs:
                    time.sleep(0.001)
                    continue
                assert not driver.complete([Completion(j.id, str(j.lease_token)) for j in jobs])
                done[index] += len(jobs)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        counts = drivers[0].count()
        assert sum(done) == count and counts == {("default", JobState.SUCCEEDED): count}, counts
        return count / elapsed
    finally:
        for driver in drivers:
            driver.close()


@contextmanager
def memory() -> Iterator[Factory]:
    from taskharbor.drivers.memory import MemoryDriver

    store = MemoryDriver(clock=SystemClock())
    yield lambda: store


@contextmanager
def sqlite(folder: Path) -> Iterator[Factory]:
    from taskharbor.drivers.sqlite import SQLiteDriver

    path = folder / f"bench-{uuid.uuid4().hex[:8]}.db"
    yield lambda: SQLiteDriver(path)


@contextmanager
def postgres(url: str) -> Iterator[Factory]:
    from taskharbor.drivers.postgres import PostgresDriver

    with scratch_schema(url) as schema:
        yield lambda: PostgresDriver(url, schema=schema, notifications=False, pool_size=1)


@contextmanager
def redis_store(url: str) -> Iterator[Factory]:
    from taskharbor.drivers.redis import RedisDriver

    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    yield lambda: RedisDriver(url, prefix=prefix, poll_interval=0.05)


def every_store(
    folder: Path, url: str, servers: ExitStack
) -> dict[str, Callable[[], AbstractContextManager[Factory]]]:
    """Each store by name, as a context giving a driver factory on a fresh store of its
    kind; Redis on a redis-server of the script's own (``servers`` stops it), when the
    machine has ``redis-server``."""
    stores: dict[str, Callable[[], AbstractContextManager[Factory]]] = {
        "memory": lambda: memory(),
        "sqlite": lambda: sqlite(folder),
        "postgres": lambda: postgres(url),
    }
    if shutil.which("redis-server") is not None:
        redis_url = servers.enter_context(private_server())
        stores["redis"] = lambda: redis_store(redis_url)
    return stores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=POSTGRES_URL, help="PostgreSQL URL (a scratch server)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every job count")
    parser.add_argument("--stores", default=",".join(JOBS), help="comma-separated stores to run")
    args = parser.parse_args(argv)
    title = f"lease + complete, {WORKERS} workers, batches of {BATCH}, {KEYS:,} keys"
    table = Table(title=title)
    for column in ("store", "jobs", "per-key limit jobs/s", "no limits jobs/s", "ratio", "≥ 0.5"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as folder, ExitStack() as servers:
        for name, store in every_store(Path(folder), args.url, servers).items():
            if name not in args.stores.split(","):
                continue
            count = max(KEYS, int(JOBS[name] * args.scale))
            with store() as make:
                plain = lease_rate(make, count, limited=False)
            with store() as make:
                limited = lease_rate(make, count, limited=True)
            ratio = limited / plain
            table.add_row(
                name,
                f"{count:,}",
                f"{limited:,.0f}",
                f"{plain:,.0f}",
                f"{ratio:.2f}",
                "yes" if ratio >= TARGET else "NO",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
