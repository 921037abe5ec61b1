"""What a lease pays to pass over jobs held back by flow limits, on each store.

Run: ``make bench``, or ``.venv/bin/python tests/bench/bench_flow_walk.py [--held N,N]``.
Redis runs on a redis-server of the script's own (skipped without ``redis-server``).

A lease takes held-back jobs in lease order, passing over held-back ones (the
contract has no bound: a bound would starve a job behind it).  Here ``N``
held-back jobs of one key (priority 1, so first in lease order) stand ahead of
:data:`HEADS` jobs of other keys (priority 0), held back in one of two ways:

* ``sequence``: followers of the key's sequence, whose head is the first job;
* ``limit``: jobs of a key at its limit (``key_concurrency=1``, one running).

Each ``lease(limit=1)`` must reach the jobs behind them.  A store that passes
over a held-back *group* at once (spec/flow.py, ``GROUP_GUARDS``) pays the same
whatever ``N``; one that reads each held-back job pays per job.  The figure is
the median time of those leases, beside the median time of a lease with nothing
held back measured on the same store in the same run, and the slowest lease at
the largest ``N`` (a store may pay once for a flood, as PostgreSQL clears its
hints: docs/performance.md).  It is a measurement, not a test: it checks only
that each lease took the job it must.
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


def at_limit(key: str) -> FlowLimits:
    return FlowLimits(key=key, key_concurrency=1)


HOLDS = {"sequence": sequence, "limit": at_limit}
"""How the ``N`` jobs are held back: the limits every job of the scenario carries."""


def lease_times(make: Factory, hold: str, held: int) -> list[float]:
    """Seconds per ``lease(limit=1)`` of each head, past ``held`` held-back jobs."""
    limits = HOLDS[hold]
    driver = make()
    try:
        driver.migrate()
        heads = driver.enqueue(
            [EnqueueRequest("bench.walk", flow=limits(f"k{n}")) for n in range(HEADS)]
        )
        if hold == "limit":  # k0's head runs, so the key is at its limit
            (running,) = driver.lease(["default"], 1, 600.0, "bench")
            assert running.id == heads[0].job.id, (running.id, heads[0].job.id)
            heads = heads[1:]
        for start in range(0, held, 10_000):
            count = min(10_000, held - start)
            follower = EnqueueRequest("bench.walk", priority=1, flow=limits("k0"))
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
    parser.add_argument("--holds", default=",".join(HOLDS), help="how the jobs are held back")
    args = parser.parse_args(argv)
    counts = [int(count) for count in args.held.split(",")]
    table = Table(title=f"lease(limit=1) past N held-back jobs, median of {HEADS} leases")
    columns = ("store", "held back by", "nothing held", *(f"N = {n:,}" for n in counts))
    for column in (*columns, "per 1,000", f"slowest, N = {counts[-1]:,}"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as folder, ExitStack() as servers:
        for name, store in every_store(Path(folder), args.url, servers).items():
            if name not in args.stores.split(","):
                continue
            for hold in args.holds.split(","):
                medians = []
                for held in (0, *counts):
                    with store() as make:
                        times = lease_times(make, hold, held)
                    medians.append(statistics.median(times))
                per_thousand = (medians[-1] - medians[0]) / counts[-1] * 1_000
                table.add_row(
                    name,
                    hold,
                    *(f"{seconds * 1_000:,.2f} ms" for seconds in medians),
                    f"{per_thousand * 1_000:,.2f} ms",
                    f"{max(times) * 1_000:,.2f} ms",
                )
    Console().print(table)


if __name__ == "__main__":
    main()
