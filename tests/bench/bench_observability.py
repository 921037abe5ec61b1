"""What observability costs: processing with metrics, tracing, and both on, against the
same run with them off, side by side on the memory driver and on PostgreSQL.

Run: ``make bench``, or ``.venv/bin/python tests/bench/bench_observability.py [--scale F]``.

"On" is what a production worker does with both integrations: the Prometheus
metrics of :mod:`taskharbor.contrib.prometheus` (their own registry) and the
traces of :mod:`taskharbor.contrib.otel` through the OpenTelemetry SDK, every
span sampled, batched and handed to an exporter that drops them (exporting is
the collector's cost, not TaskHarbor's), and the same with a sampler keeping 1
trace in 100 (``ParentBased(TraceIdRatioBased(0.01))``, usual at thousands of
jobs per second).  The jobs are enqueued with tracing on too, so each attempt
continues a stored trace context.  Each store runs every setting in turn,
``ROUNDS`` times, and keeps the median of each, so a drift of the machine's
load hits them all.

Two figures per run: jobs per second of wall time, and jobs per CPU second
of the worker's process (all its threads).  On a shared machine the first
swings with the neighbours' load (a plain loop may get an eighth of a core);
the second is what observability adds to, and the ratio is taken on it.
PostgreSQL's worker is a spawned process, as deployed; the memory driver's
runs in this process.  It is a
measurement, not a test: it checks only that every job ran.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import statistics
import time
from collections.abc import Sequence

from common import BULK_BATCH, POSTGRES_URL, scratch_schema
from rich.console import Console
from rich.table import Table

import taskharbor as th

CONCURRENCY = 50
ROUNDS = 3
SIZES = {"memory": 30_000, "postgres": 10_000}
TARGET = 0.90
"""Processing with observability on, as a share of the same run with it off."""


class DroppingExporter:
    """An OpenTelemetry span exporter that keeps nothing."""

    def export(self, spans: Sequence[object]) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


SETTINGS = {
    "off": (),
    "metrics": ("metrics",),
    "tracing": ("tracing",),
    "both": ("metrics", "tracing"),
    "both, 1% sampled": ("metrics", "tracing", "sampled"),
}
"""What each measured setting turns on."""


def observed_app(url: str, setting: str) -> th.App:
    """The benchmark's app on ``url``: a no-op task, observed as ``setting`` says."""
    app = th.App(url)
    app.task(name="bench.noop")(_noop)
    on = SETTINGS[setting]
    if "metrics" in on:
        from prometheus_client import CollectorRegistry

        from taskharbor.contrib import prometheus

        prometheus.instrument(app, registry=CollectorRegistry())
    if "tracing" in on:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

        from taskharbor.contrib import otel

        sampler = ParentBased(TraceIdRatioBased(0.01)) if "sampled" in on else ALWAYS_ON
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))  # type: ignore[arg-type]
        otel.instrument(app, tracer_provider=provider)
    return app


async def _noop() -> None:
    return None


def fill(app: th.App, jobs: int) -> None:
    task = app.tasks["bench.noop"]
    for first in range(0, jobs, BULK_BATCH):
        app.enqueue_many(task.s() for _ in range(min(BULK_BATCH, jobs - first)))


Rates = tuple[float, float]
"""Jobs per second of wall time, and per CPU second of the worker's process."""


def memory_rate(jobs: int, setting: str) -> Rates:
    app = observed_app("memory://", setting)
    fill(app, jobs)
    started, cpu = time.perf_counter(), time.process_time()
    th.Worker(app, concurrency=CONCURRENCY).run(burst=True, handle_signals=False)
    rates = (jobs / (time.perf_counter() - started), jobs / (time.process_time() - cpu))
    _check_done(app, jobs)
    return rates


def _child(
    url: str,
    setting: str,
    ready: multiprocessing.synchronize.Barrier,
    finished: multiprocessing.Queue[tuple[float, float]],
) -> None:
    app = observed_app(url, setting)
    ready.wait()
    cpu = time.process_time()
    th.Worker(app, concurrency=CONCURRENCY).run(burst=True, handle_signals=False)
    finished.put((time.monotonic(), time.process_time() - cpu))
    app.close()


def postgres_rate(url: str, jobs: int, setting: str) -> Rates:
    with scratch_schema(url) as schema:
        store = f"{url}{'&' if '?' in url else '?'}schema={schema}"
        app = observed_app(store, setting)
        fill(app, jobs)
        spawn = multiprocessing.get_context("spawn")
        ready = spawn.Barrier(2)
        finished: multiprocessing.Queue[tuple[float, float]] = spawn.Queue()
        child = spawn.Process(target=_child, args=(store, setting, ready, finished))
        child.start()
        ready.wait()
        started = time.monotonic()
        ended, cpu = finished.get(timeout=600)
        child.join()
        _check_done(app, jobs)
        app.close()
    return jobs / (ended - started), jobs / cpu


def _check_done(app: th.App, jobs: int) -> None:
    done = app.stats()["default"][th.JobState.SUCCEEDED]
    if done != jobs:
        raise RuntimeError(f"{jobs - done} of {jobs} jobs were not processed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--postgres", default=POSTGRES_URL)
    args = parser.parse_args(argv)
    sizes = {store: max(100, int(n * args.scale)) for store, n in SIZES.items()}
    console = Console()
    runs = {
        "memory": lambda setting: memory_rate(sizes["memory"], setting),
        "postgres": lambda setting: postgres_rate(args.postgres, sizes["postgres"], setting),
    }
    table = Table(
        title=f"Processing no-op jobs, observability off and on (medians; target: CPU ratio "
        f">= {TARGET:.2f})"
    )
    columns = ("store", "jobs", "setting", "jobs/s", "jobs/CPU s", "/ off (CPU)", "target")
    for column in columns:
        table.add_column(column, justify="left" if column in ("store", "setting") else "right")
    for store, run in runs.items():
        rates: dict[str, list[Rates]] = {setting: [] for setting in SETTINGS}
        for round_ in range(ROUNDS):
            for setting in SETTINGS:
                wall, cpu = run(setting)
                rates[setting].append((wall, cpu))
                console.print(
                    f"{store} round {round_ + 1}/{ROUNDS} {setting}: "
                    f"{wall:,.0f} jobs/s, {cpu:,.0f} jobs/CPU s"
                )
        off = statistics.median(cpu for _, cpu in rates["off"])
        for setting, measured in rates.items():
            wall = statistics.median(w for w, _ in measured)
            cpu = statistics.median(c for _, c in measured)
            ratio = cpu / off
            verdict = "" if setting == "off" else ("met" if ratio >= TARGET else "missed")
            table.add_row(
                store,
                f"{sizes[store]:,}",
                setting,
                f"{wall:,.0f}",
                f"{cpu:,.0f}",
                f"{ratio:.2f}",
                verdict,
            )
    console.print(table)


if __name__ == "__main__":
    main()
