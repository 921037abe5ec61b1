"""TaskHarbor measured the way a user runs it: ``App`` to enqueue, ``th.Worker`` to process.

Processing and latency run the worker in child processes (spawned, so each
imports TaskHarbor and opens its own store like a deployed worker would);
the memory driver cannot be shared between processes, so its worker runs in
the benchmark process itself.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from common import BULK_BATCH, LATENCY_GAP, Figures, Stopwatch

import taskharbor as th

CONCURRENCY = 50
"""Handlers per worker process: the lease batch is sized to the free slots, so this is
also the largest lease (the raw SQL limit leases 50 per statement too)."""
NOOP = "bench.noop"
STAMP = "bench.stamp"


def bench_app(url: str) -> tuple[th.App, Callable[..., Any], Callable[..., Any]]:
    """An app on ``url`` with the benchmark tasks: a no-op, and one returning its start delay."""
    app = th.App(url)

    @app.task(name=NOOP)
    async def noop() -> None:
        return None

    @app.task(name=STAMP)
    async def stamp(enqueued: float) -> float:
        return (time.monotonic() - enqueued) * 1000

    return app, noop, stamp


def enqueue_single(app: th.App, noop: Any, jobs: int) -> float:
    with Stopwatch(jobs) as watch:
        for _ in range(jobs):
            noop.enqueue()
    return watch.rate


def enqueue_bulk(app: th.App, noop: Any, jobs: int) -> float:
    with Stopwatch(jobs) as watch:
        for first in range(0, jobs, BULK_BATCH):
            app.enqueue_many(noop.s() for _ in range(min(BULK_BATCH, jobs - first)))
    return watch.rate


def fill(app: th.App, noop: Any, jobs: int) -> None:
    for first in range(0, jobs, BULK_BATCH):
        app.enqueue_many(noop.s() for _ in range(min(BULK_BATCH, jobs - first)))


def _burst_worker(
    url: str,
    ready: multiprocessing.synchronize.Barrier,
    finished: multiprocessing.Queue[float],
) -> None:
    """A child process: open the store, wait for the start signal, work until no job is left."""
    app, _, _ = bench_app(url)
    ready.wait()
    th.Worker(app, concurrency=CONCURRENCY).run(burst=True, handle_signals=False)
    finished.put(time.monotonic())
    app.close()


def process(url: str, jobs: int, processes: int) -> float:
    """Jobs per second for ``processes`` worker processes emptying a queue of ``jobs`` no-ops."""
    app, noop, _ = bench_app(url)
    fill(app, noop, jobs)
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Barrier(processes + 1)
    finished: multiprocessing.Queue[float] = spawn.Queue()
    children = [
        spawn.Process(target=_burst_worker, args=(url, ready, finished)) for _ in range(processes)
    ]
    for child in children:
        child.start()
    ready.wait()
    started = time.monotonic()
    ended = max(finished.get(timeout=600) for _ in children)
    for child in children:
        child.join()
    done = app.stats()["default"][th.JobState.SUCCEEDED]
    app.close()
    if done != jobs:
        raise RuntimeError(f"{jobs - done} of {jobs} jobs were not processed")
    return jobs / (ended - started)


def process_in_process(app: th.App, noop: Any, jobs: int) -> float:
    """The same, with the worker in this process (for the memory driver)."""
    fill(app, noop, jobs)
    with Stopwatch(jobs) as watch:
        th.Worker(app, concurrency=CONCURRENCY).run(burst=True, handle_signals=False)
    return watch.rate


def _idle_worker(url: str, stop: multiprocessing.synchronize.Event) -> None:
    app, _, _ = bench_app(url)
    worker = th.Worker(app, concurrency=CONCURRENCY)
    threading.Thread(target=lambda: (stop.wait(), worker.stop()), daemon=True).start()
    worker.run(handle_signals=False)
    app.close()


def latencies(url: str, samples: int) -> list[float]:
    """Milliseconds from enqueue to handler start, each job sent to an idle worker process."""
    app, _, stamp = bench_app(url)
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    child = spawn.Process(target=_idle_worker, args=(url, stop))
    child.start()
    warm = stamp.enqueue(time.monotonic())
    app.wait(warm, timeout=60)  # the worker is up and listening
    jobs = []
    for _ in range(samples):
        time.sleep(LATENCY_GAP)
        jobs.append(stamp.enqueue(time.monotonic()))
    results = [float(app.wait(job, timeout=30).result) for job in jobs]  # type: ignore[arg-type]
    stop.set()
    child.join()
    app.close()
    return results


def measure(
    fresh: Callable[[], AbstractContextManager[str]], sizes: dict[str, int], *, in_process: bool
) -> Figures:
    """Every figure of one kind of store; ``fresh()`` gives the URL of a new, empty one."""
    figures = Figures()
    with fresh() as url:
        app, noop, _ = bench_app(url)
        figures.enqueue_single = enqueue_single(app, noop, sizes["single"])
        app.close()
    with fresh() as url:
        app, noop, _ = bench_app(url)
        figures.enqueue_bulk = enqueue_bulk(app, noop, sizes["bulk"])
        app.close()
    with fresh() as url:
        if in_process:
            app, noop, _ = bench_app(url)
            figures.processing = process_in_process(app, noop, sizes["process"])
            app.close()
        else:
            figures.processing = process(url, sizes["process"], 1)
    if not in_process:
        with fresh() as url:
            figures.latency_ms = latencies(url, sizes["latency"])
    return figures
