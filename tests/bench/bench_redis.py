"""TaskHarbor on Redis beside RQ, arq and SAQ, all on one private Redis server, one run.

Run: ``make bench`` (installs the ``bench`` extra), or
``.venv/bin/python tests/bench/bench_redis.py [--scale F]``.  The server is a
redis-server of this script's own (a free port, a temporary folder, no
persistence), flushed between systems, so nothing else shares it.  Prints one
table and the targets as ratios measured in this run (docs/redis.md, issue 20).
"""

from __future__ import annotations

import argparse
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import peers_redis
import redis
import taskharbor_harness as harbor
from common import Figures
from redis_server import private_server
from rich.console import Console
from rich.table import Table

SIZES = {"process": 5_000, "single": 2_000, "bulk": 20_000, "latency": 100}


def harbor_stores(url: str) -> Callable[[], AbstractContextManager[str]]:
    @contextmanager
    def fresh() -> Iterator[str]:
        yield f"{url}?prefix=bench_{uuid.uuid4().hex[:8]}"

    return fresh


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    scale = parser.parse_args().scale
    sizes = {key: max(10, int(n * scale)) for key, n in SIZES.items()}
    console = Console()
    if shutil.which("redis-server") is None:
        console.print("no redis-server on this machine: the Redis benchmark is skipped")
        return
    systems: dict[str, Figures] = {}
    with private_server() as url:
        flush = redis.Redis.from_url(url)
        console.print("TaskHarbor on Redis")
        systems["TaskHarbor Redis"] = harbor.measure(harbor_stores(url), sizes, in_process=False)
        for name, run in (("RQ (SimpleWorker)", peers_redis.rq), ("arq", peers_redis.arq),
                          ("SAQ", peers_redis.saq)):  # fmt: skip
            flush.flushdb()
            console.print(name)
            systems[name] = run(url, sizes)
        flush.close()
    table = Table(title="No-op jobs on one Redis server, one worker process (jobs/s; latency ms)")
    for column in ("system", "processing", "p50", "p99"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, f in systems.items():
        table.add_row(name, *(f"{v:,.1f}" if v is not None else "—"
                              for v in (f.processing, f.p50(), f.p99())))  # fmt: skip
    console.print(table)
    ours = systems["TaskHarbor Redis"]
    fastest = max((f.processing or 0.0, name) for name, f in systems.items() if f is not ours)
    ratio = (ours.processing or 0.0) / fastest[0]
    console.print(f"processing / fastest peer ({fastest[1]}): {ratio:.2f} (target >= 2)")
    console.print(f"enqueue->start p50: {ours.p50() or 0:.2f} ms (target <= 2)")


if __name__ == "__main__":
    main()
