"""Where the enqueue-to-start latency goes on PostgreSQL and Redis, hop by hop.

    .venv/bin/python tests/bench/latency_probe.py [--samples 300] [--url URL] [--redis URL]

The set-up of the benchmark's latency figure: an idle worker process (concurrency
50, LISTEN/NOTIFY on PostgreSQL, pub/sub on Redis) and one job enqueued every
``LATENCY_GAP`` seconds.  PostgreSQL is probed first, then Redis (a private
redis-server unless ``--redis`` names one), in the same run, so the PostgreSQL
figures are the baseline that tells what the machine's load did.  In the
worker process only, the functions each hop passes through are wrapped to note
when the hop last happened; the probe task's handler returns those notes.  The
times are ``time.monotonic()``, one clock for every process on Linux, so the
producer's notes and the worker's compare.  A sample whose hops are out of
order (a note left from another passage) is dropped and counted.  The wrapped
functions are internals, named in :func:`instrument`: follow them when they move.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import multiprocessing.synchronize
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from common import LATENCY_GAP, POSTGRES_URL, Figures, scratch_schema
from redis_server import private_server

import taskharbor as th
from taskharbor.drivers.postgres import driver as postgres
from taskharbor.drivers.postgres import notify as postgres_notify
from taskharbor.drivers.redis import driver as redis_driver
from taskharbor.drivers.redis import notify as redis_notify

PROBE = "bench.probe"
HOPS = (
    ("listener got the notification", "notified"),
    ("wait_for_jobs returned (I/O thread)", "waited"),
    ("lease sent (same I/O thread)", "leasing"),
    ("lease returned (I/O thread)", "leased"),
    ("event loop has the leased jobs", "woke"),
    ("job task created (event loop)", "started"),
    ("handler running", "handler"),
)
"""(what happened, note name) in the order a job passes them, after ``enqueue()`` is called.
When ``enqueue()`` returns is noted too, but off this chain: the server sends the
notification at the commit, so the listener may hear of the job before the producer.
An idle worker on a store with notifications leases on the thread its wait returned on
(``Worker._wait_then_lease``), then hands the jobs to the event loop."""

notes: dict[str, float] = {}
"""The worker process's latest time for each hop."""


def note(name: str) -> None:
    notes[name] = time.monotonic()


def noting_after(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, noting ``name`` when it returns."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        note(name)
        return result

    return wrapper


def noting_lease(fn: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    """``lease``, noting when it was sent and returned, for the calls that leased a job."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> list[Any]:
        sent = time.monotonic()
        leased = fn(*args, **kwargs)
        if leased:
            notes["leasing"], notes["leased"] = sent, time.monotonic()
        return leased

    return wrapper


def noting_taken(fn: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    """``Worker._take_waited``, noting when the event loop took jobs an idle wait leased."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> list[Any]:
        taken = fn(*args, **kwargs)
        if taken:
            note("woke")
        return taken

    return wrapper


def instrument(url: str) -> None:
    """Wrap the hops of this process (the worker's) for the store of ``url``."""
    if url.startswith("redis"):
        redis_listener = redis_notify.Listener
        redis_listener._on_message = noting_after("notified", redis_listener._on_message)  # type: ignore[method-assign]
        driver: Any = redis_driver.RedisDriver
    else:
        listener = postgres_notify.Listener
        listener._on_notify = noting_after("notified", listener._on_notify)  # type: ignore[method-assign]
        driver = postgres.PostgresDriver
    driver.wait_for_jobs = noting_after("waited", driver.wait_for_jobs)
    driver.lease = noting_lease(driver.lease)
    worker = th.Worker
    worker._take_waited = noting_taken(worker._take_waited)  # type: ignore[method-assign]
    worker._start = noting_after("started", worker._start)  # type: ignore[method-assign]


def probe_app(url: str) -> tuple[th.App, Any]:
    app = th.App(url)

    @app.task(name=PROBE)
    async def probe() -> dict[str, float]:
        note("handler")
        return dict(notes)

    return app, probe


def idle_worker(
    url: str, stop: multiprocessing.synchronize.Event, setup: Callable[[], None]
) -> None:
    """The worker process: ``setup()`` (a variant to try), instrument, run until ``stop``."""
    setup()
    instrument(url)
    app, _ = probe_app(url)
    worker = th.Worker(app, concurrency=50)
    threading.Thread(target=stop_when_set, args=(worker, stop), daemon=True).start()
    worker.run(handle_signals=False)
    app.close()


def stop_when_set(worker: th.Worker, stop: multiprocessing.synchronize.Event) -> None:
    stop.wait()
    worker.stop()


def nothing() -> None:
    """No variant: the code as it is."""


def sample(url: str, samples: int, setup: Callable[[], None] = nothing) -> list[dict[str, float]]:
    """The hop times of ``samples`` jobs, each enqueued at ``"enqueue"`` to an idle worker."""
    app, probe = probe_app(url)
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    child = spawn.Process(target=idle_worker, args=(url, stop, setup))
    child.start()
    app.wait(probe.enqueue(), timeout=60)  # the worker is up and listening
    sent = []
    for _ in range(samples):
        time.sleep(LATENCY_GAP)
        before = time.monotonic()
        job = probe.enqueue()
        sent.append((job, before, time.monotonic()))
    runs = []
    for job, before, after in sent:
        hops = app.wait(job, timeout=30).result
        assert isinstance(hops, dict)
        runs.append({"enqueue": before, "enqueued": after, **hops})
    stop.set()
    child.join()
    app.close()
    return runs


def ordered(runs: list[dict[str, float]]) -> Iterator[dict[str, float]]:
    """The runs whose hops all happened, in order."""
    names = ["enqueue", *(name for _, name in HOPS)]
    for run in runs:
        if all(name in run for name in names):
            times = [run[name] for name in names]
            if times == sorted(times):
                yield run


def total_ms(runs: list[dict[str, float]]) -> list[float]:
    """Milliseconds from ``enqueue()`` called to the handler running, per run."""
    return [(run["handler"] - run["enqueue"]) * 1000 for run in runs]


def report(runs: list[dict[str, float]]) -> str:
    """Median milliseconds of each hop after the previous one, then the total's p50 and p99."""
    kept = list(ordered(runs))
    if not kept:
        return f"no sample had its hops in order ({len(runs)} dropped)"
    lines = []
    previous = "enqueue"
    for what, name in HOPS:
        gap = statistics.median((run[name] - run[previous]) * 1000 for run in kept)
        lines.append(f"  {what:<40} +{gap:6.2f} ms")
        previous = name
    returned = statistics.median((run["enqueued"] - run["enqueue"]) * 1000 for run in kept)
    lines.append(f"  {'(enqueue() returned at':<40} {returned:6.2f} ms)")
    total = Figures(latency_ms=total_ms(kept))
    lines.append(f"  {'total p50 / p99':<40} {total.p50():6.2f} / {total.p99():.2f} ms")
    lines.append(f"  ({len(kept)} samples, {len(runs) - len(kept)} dropped: hops out of order)")
    return "\n".join(lines)


def probe_postgres(url: str, samples: int) -> list[dict[str, float]]:
    with scratch_schema(url) as schema:
        return sample(f"{url}{'&' if '?' in url else '?'}schema={schema}", samples)


def probe_redis(url: str | None, samples: int) -> list[dict[str, float]]:
    prefix = f"probe_{uuid.uuid4().hex[:8]}"
    if url is not None:
        return sample(f"{url}{'&' if '?' in url else '?'}prefix={prefix}", samples)
    with private_server() as private:
        return sample(f"{private}?prefix={prefix}", samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--url", default=POSTGRES_URL, help="PostgreSQL (the baseline)")
    parser.add_argument("--redis", default=None, help="a Redis URL (default: a private server)")
    parser.add_argument("--only", choices=("postgres", "redis"), default=None)
    args = parser.parse_args()
    results = {}
    if args.only != "redis":
        results["PostgreSQL"] = probe_postgres(args.url, args.samples)
    if args.only != "postgres":
        results["Redis"] = probe_redis(args.redis, args.samples)
    for store, runs in results.items():
        print(f"{store}: median milliseconds per hop, enqueue() called at 0:")
        print(report(runs))
    if len(results) == 2:
        p50 = {store: statistics.median(total_ms(runs)) for store, runs in results.items()}
        print(f"Redis p50 / PostgreSQL p50 (same run): {p50['Redis'] / p50['PostgreSQL']:.2f}")


if __name__ == "__main__":
    main()
