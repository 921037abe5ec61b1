"""The Python Redis queues a user would pick instead, each driven through its public API
the way its documentation shows: RQ, arq and SAQ.

Fairness rules as in peers.py: no-op handlers, one worker process (here: this
process, on the systems' own workers), latency from enqueue to handler start
with an idle worker, probes ``LATENCY_GAP`` apart.  Each system gets the same
private Redis server (``url``), flushed between systems.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any

from common import LATENCY_GAP, Figures


def noop() -> None:
    return None


def stamp(enqueued: float) -> float:
    return (time.monotonic() - enqueued) * 1000


# -- RQ ------------------------------------------------------------------------------------


def _rq_listener(url: str) -> None:
    from redis import Redis
    from rq import Queue, SimpleWorker

    connection = Redis.from_url(url)
    worker = SimpleWorker([Queue("bench", connection=connection)], connection=connection)
    worker.work(with_scheduler=False)


def rq(url: str, sizes: dict[str, int]) -> Figures:
    """RQ with its SimpleWorker (no fork per job: RQ's fastest documented worker)."""
    from redis import Redis
    from rq import Queue, SimpleWorker

    figures = Figures()
    connection = Redis.from_url(url)
    queue = Queue("bench", connection=connection)
    for _ in range(sizes["process"]):
        queue.enqueue(noop)
    worker = SimpleWorker([queue], connection=connection)
    started = time.perf_counter()
    worker.work(burst=True, with_scheduler=False)
    figures.processing = sizes["process"] / (time.perf_counter() - started)
    spawn = multiprocessing.get_context("spawn")
    child = spawn.Process(target=_rq_listener, args=(url,))
    child.start()
    warm = queue.enqueue(stamp, time.monotonic())
    _wait(lambda: warm.get_status(refresh=True) == "finished")
    probes = []
    for _ in range(sizes["latency"]):
        time.sleep(LATENCY_GAP)
        probes.append(queue.enqueue(stamp, time.monotonic()))
    _wait(lambda: all(job.get_status(refresh=True) == "finished" for job in probes))
    figures.latency_ms = [float(job.return_value()) for job in probes]
    child.terminate()  # RQ's warm shutdown, while the server still answers
    child.join(30)
    return figures


def _wait(done: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError("a peer never finished its jobs")
        time.sleep(0.01)


# -- arq -----------------------------------------------------------------------------------


async def _arq(url: str, sizes: dict[str, int]) -> Figures:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    figures = Figures()
    settings = RedisSettings.from_dsn(url)
    pool = await create_pool(settings)

    async def arq_noop(ctx: dict[str, Any]) -> None:
        return None

    async def arq_stamp(ctx: dict[str, Any], enqueued: float) -> None:
        figures.latency_ms.append((time.monotonic() - enqueued) * 1000)

    functions = [func(arq_noop, name="arq_noop"), func(arq_stamp, name="arq_stamp")]
    for _ in range(sizes["process"]):
        await pool.enqueue_job("arq_noop")
    worker = Worker(functions, redis_pool=pool, burst=True, handle_signals=False, log_results=False)
    started = time.perf_counter()
    await worker.async_run()
    figures.processing = sizes["process"] / (time.perf_counter() - started)
    idle = Worker(functions, redis_pool=pool, handle_signals=False, log_results=False)
    running = asyncio.create_task(idle.async_run())
    await asyncio.sleep(0.5)
    for _ in range(sizes["latency"]):
        await asyncio.sleep(LATENCY_GAP)
        await pool.enqueue_job("arq_stamp", time.monotonic())
    deadline = time.monotonic() + 60
    while len(figures.latency_ms) < sizes["latency"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    running.cancel()
    await idle.close()
    return figures


def arq(url: str, sizes: dict[str, int]) -> Figures:
    """arq with its default worker (max_jobs 10, poll_delay 0.5 s)."""
    return asyncio.run(_arq(url, sizes))


# -- SAQ -----------------------------------------------------------------------------------


async def _saq(url: str, sizes: dict[str, int]) -> Figures:
    from saq import Queue, Worker

    figures = Figures()
    queue = Queue.from_url(url, name="bench")

    async def saq_noop(ctx: dict[str, Any]) -> None:
        return None

    async def saq_stamp(ctx: dict[str, Any], *, enqueued: float) -> None:
        figures.latency_ms.append((time.monotonic() - enqueued) * 1000)

    await queue.connect()
    for _ in range(sizes["process"]):
        await queue.enqueue("saq_noop")
    functions: Any = [("saq_noop", saq_noop), ("saq_stamp", saq_stamp)]
    jobs = sizes["process"]
    worker = Worker(
        queue, functions=functions, burst=True, max_burst_jobs=jobs, dequeue_timeout=1.0
    )
    started = time.perf_counter()
    await worker.start()
    figures.processing = sizes["process"] / (time.perf_counter() - started)
    idle = Worker(queue, functions=functions)
    running = asyncio.create_task(idle.start())
    await asyncio.sleep(0.5)
    for _ in range(sizes["latency"]):
        await asyncio.sleep(LATENCY_GAP)
        await queue.enqueue("saq_stamp", enqueued=time.monotonic())
    deadline = time.monotonic() + 60
    while len(figures.latency_ms) < sizes["latency"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await idle.stop()
    running.cancel()
    await queue.disconnect()
    return figures


def saq(url: str, sizes: dict[str, int]) -> Figures:
    """SAQ with its default worker (concurrency 10)."""
    return asyncio.run(_saq(url, sizes))
