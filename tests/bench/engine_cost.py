"""The engine on its own (memory driver): a long run's RSS, and where the per-job time goes."""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import BULK_BATCH

import taskharbor as th

BACKLOG = 20_000
"""Jobs kept waiting during the long run: enough that the worker never starves."""
PAGE = 4096
MIB = 1024 * 1024


def rss_bytes() -> int:
    """This process's resident set size, from ``/proc`` (Linux)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * PAGE


def long_run(jobs: int) -> dict[str, Any]:
    """One worker on the memory driver runs ``jobs`` no-ops; RSS in MiB at start, peak, end,
    and after each tenth of the jobs (flat once warm means nothing accumulates per job).

    Finished jobs are pruned as the worker goes (``retention=0``), so the store
    holds only the backlog: what grows is the engine's own memory.
    """
    app = th.App("memory://")
    ran = 0

    @app.task(name="bench.noop")
    async def noop() -> None:
        nonlocal ran
        ran += 1

    worker = th.Worker(app, concurrency=50, retention=0.0, prune_interval=0.5)
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False})
    enqueued = 0

    def top_up() -> None:
        nonlocal enqueued
        while enqueued < jobs and enqueued - ran < BACKLOG:
            count = min(BULK_BATCH, jobs - enqueued)
            app.enqueue_many(noop.s() for _ in range(count))
            enqueued += count

    top_up()
    thread.start()
    time.sleep(1.0)  # warmed up: every pool thread started, the first batches run
    start = peak = rss_bytes()
    tenths: list[float] = []
    started = time.perf_counter()
    while ran < jobs:
        top_up()
        now = rss_bytes()
        peak = max(peak, now)
        if ran >= (len(tenths) + 1) * jobs / 10:
            tenths.append(now / MIB)
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    worker.stop()
    thread.join()
    end = rss_bytes()
    app.close()
    return {
        "jobs": jobs,
        "jobs_s": jobs / elapsed,
        "rss_start_mib": start / MIB,
        "rss_peak_mib": peak / MIB,
        "rss_end_mib": end / MIB,
        "rss_each_tenth_mib": tenths,
    }


MALLOC_SETTINGS: dict[str, dict[str, str]] = {
    "glibc malloc default": {},
    "MALLOC_ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"},
}
"""The allocator settings the long run is measured under.  glibc gives each thread that
allocates its own arena (up to 8 per core); the worker's event loop and its I/O threads
allocate and free each other's objects, and those arenas fragment, so RSS creeps while
the Python heap stays flat.  Capping the arenas is the usual deployment fix."""


def long_run_in_child(jobs: int, env: dict[str, str]) -> dict[str, Any]:
    """:func:`long_run` in a fresh interpreter with ``env`` added (allocator settings are
    read when the process starts)."""
    done = subprocess.run(
        [sys.executable, __file__, str(jobs)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def profile(jobs: int, top: int = 25) -> tuple[float, str]:
    """Microseconds per job of a burst worker on the memory driver under cProfile, and the
    functions that take them (by own time)."""
    app = th.App("memory://")

    @app.task(name="bench.noop")
    async def noop() -> None:
        return None

    for first in range(0, jobs, BULK_BATCH):
        app.enqueue_many(noop.s() for _ in range(min(BULK_BATCH, jobs - first)))
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(th.Worker(app, concurrency=50).run, burst=True, handle_signals=False)
    per_job_us = (time.perf_counter() - started) / jobs * 1e6
    app.close()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return per_job_us, text.getvalue()


if __name__ == "__main__":
    print(json.dumps(long_run(int(sys.argv[1]))))
