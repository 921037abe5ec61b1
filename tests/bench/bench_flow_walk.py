"""What a lease pays to pass over jobs held back by flow limits, on each store.

Run: ``make bench``, or ``.venv/bin/python tests/bench/bench_flow_walk.py [--held N,N]``.
Redis runs on a redis-server of the script's own (skipped without ``redis-server``).

A lease walks past held-back jobs, as far as it takes to fill its batch (the
contract has no bound: a bound would starve a job behind it).  Here ``N``
followers of one key's sequence (priority 1, so first in lease order) wait
behind the key's head (priority 0), and :data:`HEADS` heads of other keys stand
behind them too: each ``lease(limit=1)`` walks all ``N`` to reach the next head.
The figure is the median time of those leases, beside the median time of a
lease with nothing held back measured on the same store in the same run.  It is
a measurement, not a test: it checks only that each lease took the right head.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench_flow import Factory, every_store
from common import POSTGRES_URL
from rich.console import Console
from rich.table import Table

from taskharbor.spec import EnqueueRequest, FlowLimits, OnDead

HEADS = 5
HELD = (1_000, 10_000, 100_000)


def sequence(key: str) -> FlowLimits:
    return FlowLimits(key=key, sequence=OnDead.BLOCK)


def lease_times(make: Factory, held: int) -> list[float]:
    """Seconds per ``lease(limit=1)`` of each head, past ``held`` held-back jobs."""
    driver = make()
    try:
        driver.migrate()
        heads = driver.enqueue(
            [EnqueueRequest("bench.walk", flow=sequence(f"k{n}")) for n in range(HEADS)]
        )
        for start in range(0, held, 10_000):
            count = min(10_000, held - start)
            follower = EnqueueRequest("bench.walk", priority=1, flow=sequence("k0"))
            driver.enqueue([follower] * count)
        times = []
        for head in heads:
            started = time.perf_counter()
            (job,) = driver.lease(["default"], 1, 60.0, "bench")
            times.append(time.perf_counter() - started)
            assert job.id == head.job.id, (job.id, head.job.id)
        return times
    finally:
        driver.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=POSTGRES_URL, help="PostgreSQL URL (a scratch server)")
    parser.add_argument("--held", default=",".join(map(str, HELD)), help="held-back counts")
    parser.add_argument("--stores", default="memory,sqlite,postgres,redis")
    args = parser.parse_args(argv)
    counts = [int(count) for count in args.held.split(",")]
    table = Table(title=f"lease(limit=1) past N held-back jobs, median of {HEADS} leases")
    for column in ("store", "nothing held", *(f"N = {n:,}" for n in counts), "per 1,000"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as folder, ExitStack() as servers:
        for name, store in every_store(Path(folder), args.url, servers).items():
            if name not in args.stores.split(","):
                continue
            medians = []
            for held in (0, *counts):
                with store() as make:
                    medians.append(statistics.median(lease_times(make, held)))
            per_thousand = (medians[-1] - medians[0]) / counts[-1] * 1_000
            table.add_row(
                name,
                *(f"{seconds * 1_000:,.2f} ms" for seconds in medians),
                f"{per_thousand * 1_000:,.2f} ms",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
