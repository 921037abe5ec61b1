"""Where the enqueue-to-start latency goes on PostgreSQL, hop by hop.

    .venv/bin/python tests/bench/latency_probe.py [--samples 300] [--url URL]

The set-up of the benchmark's latency figure: an idle worker process (concurrency
50, LISTEN/NOTIFY) and one job enqueued every ``LATENCY_GAP`` seconds.  In the
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
from collections.abc import Callable, Iterator
from typing import Any

from common import LATENCY_GAP, POSTGRES_URL, Figures, scratch_schema

import taskharbor as th
from taskharbor.drivers.postgres import driver as postgres
from taskharbor.drivers.postgres import notify as postgres_notify

PROBE = "bench.probe"
HOPS = (
    ("listener got the notification", "notified"),
    ("wait_for_jobs returned (I/O thread)", "waited"),
    ("event loop left the idle wait", "woke"),
    ("lease sent (I/O thread)", "leasing"),
    ("lease returned (I/O thread)", "leased"),
    ("job task created (event loop)", "started"),
    ("handler running", "handler"),
)
"""(what happened, note name) in the order a job passes them, after ``enqueue()`` is called.
When ``enqueue()`` returns is noted too, but off this chain: the server sends the
notification at the commit, so the listener may hear of the job before the producer."""

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


def noting_idle_wait(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await fn(*args, **kwargs)
        note("woke")
        return result

    return wrapper


def instrument() -> None:
    """Wrap the hops of this process (the worker's)."""
    listener = postgres_notify.Listener
    listener._on_notify = noting_after("notified", listener._on_notify)  # type: ignore[method-assign]
    driver = postgres.PostgresDriver
    driver.wait_for_jobs = noting_after("waited", driver.wait_for_jobs)  # type: ignore[method-assign]
    driver.lease = noting_lease(driver.lease)  # type: ignore[method-assign]
    worker = th.Worker
    worker._idle_wait = noting_idle_wait(worker._idle_wait)  # type: ignore[method-assign]
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
    instrument()
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
    total = Figures(latency_ms=[(run["handler"] - run["enqueue"]) * 1000 for run in kept])
    lines.append(f"  {'total p50 / p99':<40} {total.p50():6.2f} / {total.p99():.2f} ms")
    lines.append(f"  ({len(kept)} samples, {len(runs) - len(kept)} dropped: hops out of order)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--url", default=POSTGRES_URL)
    args = parser.parse_args()
    with scratch_schema(args.url) as schema:
        runs = sample(f"{args.url}{'&' if '?' in args.url else '?'}schema={schema}", args.samples)
    print("median milliseconds per hop, enqueue() called at 0:")
    print(report(runs))


if __name__ == "__main__":
    main()
