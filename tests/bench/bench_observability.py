"""What observability costs: processing with metrics, tracing, and both on, against the
same run with them off, side by side on the memory driver and on PostgreSQL.

Run: ``make bench``, or ``.venv/bin/python tests/bench/bench_observability.py [--scale F]``
(``--stores memory``, ``--settings "metrics;both, 1% sampled"`` and ``--rounds N`` run a
part of it; "off" always runs, every ratio is to it).

"On" is what a production worker does with both integrations: the Prometheus
metrics of :mod:`taskharbor.contrib.prometheus` (their own registry) and the
traces of :mod:`taskharbor.contrib.otel` through the OpenTelemetry SDK, every
span sampled, batched and handed to an exporter that drops them (exporting is
the collector's cost, not TaskHarbor's), and the same with a sampler keeping 1
trace in 100 (``ParentBased(TraceIdRatioBased(0.01))``, usual at thousands of
jobs per second, as docs/observability.md recommends).  Every setting's jobs
are enqueued the same way, ``BULK_BATCH`` per call (the insertion pattern
changes what PostgreSQL's processing costs, so it must not differ between
settings).  With tracing on they are enqueued with tracing on too, so each
attempt continues a stored trace context: one per batch, which the sampler
keeps or drops as a whole (the 10 to 30 batches of a run are usually all
dropped: that setting measures attempts of unsampled traces).  The last
setting gives each job a trace of its own, as when every job is enqueued by
its own traced request: the batches are stored by an app without tracing,
each request carrying the context of its own producer span sampled 1 in 100,
so about 1 attempt in 100 records a span and every attempt parses a context
of its own.  The workers registry is on in every setting (a worker
registers whenever its store keeps one).  Each store runs every setting in
turn, ``ROUNDS`` times; a setting's ratio is the median of its ratios to the
"off" run of the same round (settings of one round run back to back, so a
drift of the machine's load between rounds does not enter a ratio), and the
table shows the lowest and highest of them too.

What bounds tracing: the same run also measures the SDK alone doing what
one attempt's recorded span costs it (the span started with the attempt's
attributes under its stored parent, its outcome set, ended, through the same
processor and exporter), in a loop in this process, and the same for a span
its sampler drops; the table after the figures puts that beside the CPU each
setting adds per job, the rest being TaskHarbor's own (and the cost of
running it beside a busy event loop rather than in a hot loop).

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
import dataclasses
import functools
import multiprocessing
import multiprocessing.synchronize
import statistics
import time
from collections.abc import Sequence
from typing import Any

from common import BULK_BATCH, POSTGRES_URL, scratch_schema
from rich.console import Console
from rich.table import Table

import taskharbor as th
from taskharbor.spec import EnqueueRequest

CONCURRENCY = 50
ROUNDS = 5
SIZES = {"memory": 30_000, "postgres": 10_000}
TARGET = 0.90
"""Processing with observability on, as a share of the same run with it off."""
SDK_SPANS = 20_000
"""Spans started and ended by the SDK alone, per measurement of its own cost."""


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
    "both, 1%, a trace per job": ("metrics", "tracing", "sampled", "per job"),
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


def fill(app: th.App, jobs: int, setting: str) -> None:
    task = app.tasks["bench.noop"]
    per_job = "per job" in SETTINGS[setting]
    plain = th.App(driver=app.driver) if per_job else app  # no batch-wide producer span
    for first in range(0, jobs, BULK_BATCH):
        signatures = [task.s() for _ in range(min(BULK_BATCH, jobs - first))]
        if per_job:
            plain.enqueue_requests([_traced(app.request_for(s)) for s in signatures])
        else:
            app.enqueue_many(signatures)


def _traced(request: EnqueueRequest) -> EnqueueRequest:
    """``request`` with the trace context of a producer span of its own, sampled 1 in 100."""
    from opentelemetry import propagate, trace

    with _producers().start_as_current_span("send default", kind=trace.SpanKind.PRODUCER):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    return dataclasses.replace(request, headers=carrier)


@functools.cache
def _producers() -> Any:
    """A tracer of producer spans sampled 1 in 100, kept nowhere."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)))
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))  # type: ignore[arg-type]
    return provider.get_tracer("bench producer")


Rates = tuple[float, float]
"""Jobs per second of wall time, and per CPU second of the worker's process."""


def memory_rate(jobs: int, setting: str) -> Rates:
    app = observed_app("memory://", setting)
    fill(app, jobs, setting)
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
        fill(app, jobs, setting)
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


def sdk_span_cost(sampled: bool) -> float:
    """Microseconds of CPU (this process, the processor's thread included) the SDK alone
    spends per attempt span: started under a stored parent with the attributes an attempt
    has, its outcome set, ended; ``sampled`` False: a parent its producer did not sample,
    under the 1-in-100 sampler (which drops the span)."""
    from opentelemetry import propagate
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
    from opentelemetry.trace import SpanKind

    sampler = ALWAYS_ON if sampled else ParentBased(TraceIdRatioBased(0.01))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))  # type: ignore[arg-type]
    tracer = provider.get_tracer("bench")
    flags = "01" if sampled else "00"
    parent = propagate.extract(
        {"traceparent": f"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}"}
    )
    attributes: dict[str, str | int] = {
        "messaging.system": "taskharbor",
        "messaging.destination.name": "default",
        "messaging.message.id": "123456",
        "taskharbor.task": "bench.noop",
        "taskharbor.job.attempt": 1,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
    }
    ended = {"taskharbor.job.outcome": "succeeded", "messaging.client.id": "host-1-abc"}
    cpu = time.process_time()
    for _ in range(SDK_SPANS):
        span = tracer.start_span(
            "process default", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        span.set_attributes(ended)
        span.end()
    provider.force_flush()
    spent = time.process_time() - cpu
    provider.shutdown()
    return spent / SDK_SPANS * 1e6


def _check_done(app: th.App, jobs: int) -> None:
    done = app.stats()["default"][th.JobState.SUCCEEDED]
    if done != jobs:
        raise RuntimeError(f"{jobs - done} of {jobs} jobs were not processed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--postgres", default=POSTGRES_URL)
    parser.add_argument(
        "--stores", default=",".join(SIZES), help="comma-separated: memory, postgres"
    )
    parser.add_argument(
        "--settings",
        default=";".join(s for s in SETTINGS if s != "off"),
        help="semicolon-separated settings measured beside 'off' (default: all)",
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    stores = [store.strip() for store in args.stores.split(",")]
    chosen = ["off", *(s.strip() for s in args.settings.split(";") if s.strip() != "off")]
    unknown = [name for name in (*stores, *chosen) if name not in (*SIZES, *SETTINGS)]
    if unknown or args.rounds < 1:
        parser.error(
            f"unknown store or setting {unknown}, or rounds < 1 (stores: "
            f"{', '.join(SIZES)}; settings: {'; '.join(SETTINGS)})"
        )
    rounds = args.rounds
    sizes = {store: max(100, int(n * args.scale)) for store, n in SIZES.items()}
    console = Console(width=150)  # the tables are wide; a pipe would get 80 columns
    every_run = {
        "memory": lambda setting: memory_rate(sizes["memory"], setting),
        "postgres": lambda setting: postgres_rate(args.postgres, sizes["postgres"], setting),
    }
    runs = {store: every_run[store] for store in stores}
    table = Table(
        title=f"Processing no-op jobs, observability off and on (medians of {rounds} rounds; "
        f"target: CPU ratio >= {TARGET:.2f})"
    )
    columns = (
        "store",
        "jobs",
        "setting",
        "jobs/s",
        "jobs/CPU s",
        "/ off (CPU)",
        "lowest-highest",
        "target",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("store", "setting") else "right")
    per_job: dict[str, dict[str, float]] = {}  # µs of the worker's CPU per job (medians)
    for store, run in runs.items():
        rates: dict[str, list[Rates]] = {setting: [] for setting in chosen}
        for round_ in range(rounds):
            for setting in chosen:
                wall, cpu = run(setting)
                rates[setting].append((wall, cpu))
                console.print(
                    f"{store} round {round_ + 1}/{rounds} {setting}: "
                    f"{wall:,.0f} jobs/s, {cpu:,.0f} jobs/CPU s"
                )
        offs = [cpu for _, cpu in rates["off"]]
        per_job[store] = {}
        for setting, measured in rates.items():
            wall = statistics.median(w for w, _ in measured)
            cpu = statistics.median(c for _, c in measured)
            ratios = [c / off for (_, c), off in zip(measured, offs, strict=True)]
            ratio = statistics.median(ratios)
            per_job[store][setting] = 1e6 / statistics.median(offs) / ratio
            verdict = "" if setting == "off" else ("met" if ratio >= TARGET else "missed")
            table.add_row(
                store,
                f"{sizes[store]:,}",
                setting,
                f"{wall:,.0f}",
                f"{cpu:,.0f}",
                f"{ratio:.2f}",
                f"{min(ratios):.2f}-{max(ratios):.2f}",
                verdict,
            )
    console.print(table)
    sdk = {
        sampled: statistics.median(sdk_span_cost(sampled) for _ in range(rounds))
        for sampled in (True, False)
    }
    bounds = Table(
        title="What bounds it: µs of the worker's CPU per job, and what each setting adds"
    )
    columns = ("store", "off", "budget (to the target)", *(s for s in chosen if s != "off"))
    for column in columns:
        bounds.add_column(column, justify="left" if column == "store" else "right")
    for store, by_setting in per_job.items():
        off_us = by_setting["off"]
        added = [f"{by_setting[s] - off_us:+.1f}" for s in chosen if s != "off"]
        bounds.add_row(store, f"{off_us:.1f}", f"{off_us * (1 / TARGET - 1):.1f}", *added)
    console.print(bounds)
    console.print(
        f"The OpenTelemetry SDK alone, per attempt span (median of {rounds} loops of "
        f"{SDK_SPANS:,}): {sdk[True]:.1f} µs for a recorded one (started with the "
        f"attempt's 7 attributes, outcome set, ended, batch processor, dropping exporter), "
        f"{sdk[False]:.1f} µs for one its parent-based sampler drops (an attempt of an "
        f"unsampled trace does not ask for it). Sampling 1 job in 100 adds about "
        f"{sdk[True] / 100:.1f} µs per job of recorded spans."
    )


if __name__ == "__main__":
    main()
