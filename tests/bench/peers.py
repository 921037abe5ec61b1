"""The peers, each driven through its public API the way its documentation shows.

Fairness rules, the same for every system: no-op handlers; one worker process;
bulk enqueue in batches of ``BULK_BATCH`` where the system has a batch call;
latency is enqueue-to-handler-start with an idle worker, probes
``LATENCY_GAP`` apart.  The PostgreSQL peers each get a database of their own
on the same server (created here, dropped after), so their schemas never meet
ours.  The peers' workers run in this process, on their own event loop (the
TaskHarbor latency worker runs in a child process, which if anything costs it).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from common import BULK_BATCH, LATENCY_GAP, Figures, scratch_database

PGQUEUER_BATCH = 10
"""PgQueuer's default dequeue batch."""
PROCRASTINATE_CONCURRENCY = 10


LATENCY_DEADLINE = 60.0
"""Seconds to wait for the last latency probe to start before calling the run broken."""


async def _all_started(figures: Figures, probes: int) -> None:
    deadline = time.monotonic() + LATENCY_DEADLINE
    while len(figures.latency_ms) < probes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{probes - len(figures.latency_ms)} latency probes never started")
        await asyncio.sleep(0.05)


# -- PgQueuer ------------------------------------------------------------------------------


async def _pgqueuer(url: str, sizes: dict[str, int]) -> Figures:
    from pgqueuer import PsycopgDriver, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode
    from pgqueuer.queries import Queries

    figures = Figures()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        queries = Queries(PsycopgDriver(conn))
        await queries.install()
        started = time.perf_counter()
        for _ in range(sizes["single"]):
            await queries.enqueue("noop", None)
        figures.enqueue_single = sizes["single"] / (time.perf_counter() - started)
        await queries.clear_queue()
        started = time.perf_counter()
        for first in range(0, sizes["bulk"], BULK_BATCH):
            count = min(BULK_BATCH, sizes["bulk"] - first)
            await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
        figures.enqueue_bulk = sizes["bulk"] / (time.perf_counter() - started)
        await queries.clear_queue()

        jobs = sizes["process"]
        for first in range(0, jobs, BULK_BATCH):
            count = min(BULK_BATCH, jobs - first)
            await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
        manager = QueueManager(Queries(PsycopgDriver(conn)))
        done = 0

        @manager.entrypoint("noop")
        async def noop(job: Any) -> None:
            nonlocal done
            done += 1

        started = time.perf_counter()
        await manager.run(batch_size=PGQUEUER_BATCH, mode=QueueExecutionMode.drain)
        figures.processing = jobs / (time.perf_counter() - started)
        if done != jobs:
            raise RuntimeError(f"PgQueuer ran {done} of {jobs} jobs")

    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as worker_conn,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as producer_conn,
    ):
        manager = QueueManager(Queries(PsycopgDriver(worker_conn)))
        producer = Queries(PsycopgDriver(producer_conn))

        @manager.entrypoint("stamp")
        async def stamp(job: Any) -> None:
            figures.latency_ms.append((time.monotonic() - float(job.payload)) * 1000)

        running = asyncio.create_task(manager.run(batch_size=PGQUEUER_BATCH))
        await asyncio.sleep(1.0)  # let it start listening
        for _ in range(sizes["latency"]):
            await asyncio.sleep(LATENCY_GAP)
            await producer.enqueue("stamp", str(time.monotonic()).encode())
        await _all_started(figures, sizes["latency"])
        manager.shutdown.set()
        await running
        await Queries(PsycopgDriver(worker_conn)).uninstall()
    return figures


def pgqueuer(url: str, sizes: dict[str, int]) -> Figures:
    with scratch_database(url, "pgqueuer") as own:
        return asyncio.run(_pgqueuer(own, sizes))


# -- Procrastinate -------------------------------------------------------------------------


async def _procrastinate(url: str, sizes: dict[str, int]) -> Figures:
    import procrastinate

    figures = Figures()
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    done = 0

    @app.task(name="noop")
    async def noop() -> None:
        nonlocal done
        done += 1

    @app.task(name="stamp")
    async def stamp(enqueued: float) -> None:
        figures.latency_ms.append((time.monotonic() - enqueued) * 1000)

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        started = time.perf_counter()
        for _ in range(sizes["single"]):
            await noop.defer_async()
        figures.enqueue_single = sizes["single"] / (time.perf_counter() - started)
        started = time.perf_counter()
        for first in range(0, sizes["bulk"], BULK_BATCH):
            count = min(BULK_BATCH, sizes["bulk"] - first)
            await noop.batch_defer_async(*({} for _ in range(count)))
        figures.enqueue_bulk = sizes["bulk"] / (time.perf_counter() - started)
        await app.connector.execute_query_async("DELETE FROM procrastinate_jobs")

        jobs = sizes["process"]
        for first in range(0, jobs, BULK_BATCH):
            count = min(BULK_BATCH, jobs - first)
            await noop.batch_defer_async(*({} for _ in range(count)))
        options: dict[str, Any] = {
            "concurrency": PROCRASTINATE_CONCURRENCY,
            "install_signal_handlers": False,
        }
        started = time.perf_counter()
        await app.run_worker_async(wait=False, **options)
        figures.processing = jobs / (time.perf_counter() - started)
        if done != jobs:
            raise RuntimeError(f"Procrastinate ran {done} of {jobs} jobs")

        running = asyncio.create_task(app.run_worker_async(wait=True, **options))
        await asyncio.sleep(1.0)
        for _ in range(sizes["latency"]):
            await asyncio.sleep(LATENCY_GAP)
            await stamp.defer_async(enqueued=time.monotonic())
        await _all_started(figures, sizes["latency"])
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    return figures


def procrastinate(url: str, sizes: dict[str, int]) -> Figures:
    with scratch_database(url, "procrastinate") as own:
        return asyncio.run(_procrastinate(own, sizes))


# -- Huey on SQLite ------------------------------------------------------------------------


def huey_sqlite(sizes: dict[str, int]) -> Figures:
    """Huey's SQLite storage: enqueue by calling the task; process as its worker does.

    Processing is Huey's own worker step (``dequeue`` then ``execute``) in a
    loop, one thread; latency uses its consumer with one worker thread and
    its default polling.
    """
    from huey import SqliteHuey
    from huey.consumer import Consumer

    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="taskharbor-bench-huey-") as folder:
        huey = SqliteHuey(filename=str(Path(folder) / "huey.db"))

        @huey.task()
        def noop() -> None:
            return None

        @huey.task()
        def stamp(enqueued: float) -> None:
            figures.latency_ms.append((time.monotonic() - enqueued) * 1000)

        started = time.perf_counter()
        for _ in range(sizes["single"]):
            noop()
        figures.enqueue_single = sizes["single"] / (time.perf_counter() - started)
        huey.flush()

        jobs = sizes["process"]
        for _ in range(jobs):
            noop()
        started = time.perf_counter()
        done = 0
        while (task := huey.dequeue()) is not None:
            huey.execute(task)
            done += 1
        figures.processing = jobs / (time.perf_counter() - started)
        if done != jobs:
            raise RuntimeError(f"Huey ran {done} of {jobs} jobs")

        consumer = Consumer(huey, workers=1, worker_type="thread", periodic=False)
        consumer.start()
        time.sleep(0.5)
        for _ in range(sizes["latency"]):
            time.sleep(LATENCY_GAP)
            stamp(time.monotonic())
        deadline = time.monotonic() + LATENCY_DEADLINE
        while len(figures.latency_ms) < sizes["latency"] and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(figures.latency_ms) < sizes["latency"]:
            raise RuntimeError("Huey never started some latency probes")
        consumer.stop(graceful=True)
    return figures
