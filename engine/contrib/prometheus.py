"""Prometheus metrics of an app and its workers (``pip install 'taskharbor[prometheus]'``).

``metrics = instrument(app)`` subscribes to the app's events and registers the
collectors; ``metrics.serve(9464)`` serves them on ``/metrics`` (``taskharbor
worker --metrics-port 9464`` does both).  What is measured, and how:

* from events, in this process: ``taskharbor_jobs_enqueued_total``,
  ``taskharbor_job_outcomes_total`` (by task, queue and outcome),
  ``taskharbor_job_start_delay_seconds`` (from when a job was due to the
  start of its attempt) and ``taskharbor_job_duration_seconds``;
* from the store, read when scraped but at most once per ``store_interval``
  seconds (never per job): ``taskharbor_jobs`` by queue and state,
  ``taskharbor_oldest_ready_job_age_seconds`` by queue, and, from a store with
  the workers registry, ``taskharbor_live_workers`` by queue (registered workers
  serving it that are not gone: 0 for a queue whose jobs no live worker serves);
* from the workers running in this process: ``taskharbor_worker_slots``,
  ``taskharbor_worker_busy_slots`` and ``taskharbor_worker_leases``.

docs/observability.md has a scrape configuration, alerts and dashboard panels.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from taskharbor.spec import JobFilter, JobRecord, JobState, WorkerRecord

from .. import events
from ..events import Event
from . import missing

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector
except ImportError as error:  # pragma: no cover - the message is what is tested
    raise missing("prometheus_client", "prometheus", __name__) from error

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ..app import App
    from ..worker import Worker

logger = logging.getLogger("taskharbor")

DEFAULT_PORT = 9464
STORE_INTERVAL = 5.0
"""Seconds the store's gauges are reused before the store is read again."""
PAGE = 500
"""Ready jobs read per page while looking for the one that waited longest."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
Samples = tuple[list[tuple[str, float]], float]
"""A histogram as scraped: its cumulative buckets by upper bound, and its sum."""
COUNTED = (*events.ATTEMPT_ENDS, events.RESCUED)
"""The kinds counted in ``taskharbor_job_outcomes_total`` (the ``outcome`` label)."""


class Metrics:
    """The metrics of one app; made by :func:`instrument`."""

    def __init__(
        self,
        app: App,
        registry: CollectorRegistry = REGISTRY,
        store_interval: float = STORE_INTERVAL,
    ) -> None:
        self.app = app
        self.registry = registry
        self.tally = Tally()
        self.workers = WorkerCollector()
        self.store = StoreCollector(app, store_interval)
        self._collectors = (self.tally, self.workers, self.store)
        for collector in self._collectors:
            registry.register(collector)
        self._unsubscribe = [
            app.events.subscribe(self.tally.on_enqueued, events.ENQUEUED),
            app.events.subscribe(self.tally.on_ended, *COUNTED),
            app.events.subscribe(self.workers.on_worker, events.WORKER_STARTED),
            app.events.subscribe(self.workers.on_worker, events.WORKER_STOPPED),
        ]
        self._server: WSGIServer | None = None

    def serve(self, port: int = DEFAULT_PORT, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` over HTTP on a daemon thread; returns the port (``0`` picks a
        free one)."""
        server, _ = _start_http_server(port, addr, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop serving, unsubscribe and unregister the collectors."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for collector in self._collectors:
            self.registry.unregister(collector)


def instrument(
    app: App, *, registry: CollectorRegistry = REGISTRY, store_interval: float = STORE_INTERVAL
) -> Metrics:
    """Measure ``app`` and its workers in this process into ``registry`` (by default
    prometheus_client's global one, beside your own metrics)."""
    return Metrics(app, registry, store_interval)


class _Histogram:
    """Bucket counts and a sum, as Prometheus exposes a histogram (made cumulative when
    scraped)."""

    __slots__ = ("buckets", "counts", "total")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value

    def counts_any(self) -> bool:
        return any(self.counts)

    def samples(self) -> Samples:
        """Cumulative ``(le, count)`` buckets, and the sum."""
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return cumulative, self.total


class _Ended:
    """What one ``(task, queue, outcome)`` has counted: the attempts, their durations, and
    the start delays of its ``(task, queue)`` (shared by that pair's outcomes).  Made once
    per label set and kept, so an attempt's end finds everything it adds to in one lookup."""

    __slots__ = ("count", "delays", "durations")

    def __init__(self, delays: _Histogram) -> None:
        self.count = 0
        self.durations = _Histogram(DURATION_BUCKETS)
        self.delays = delays


class Tally(Collector):
    """The counters and histograms fed by events, kept as plain numbers under one lock
    and turned into metric families when scraped: an attempt costs a dict lookup and a
    few additions, not prometheus_client's per-child locks and label lookups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._enqueued: dict[tuple[str, str], int] = {}
        self._ended: dict[tuple[str, str, str], _Ended] = {}
        self._delays: dict[tuple[str, str], _Histogram] = {}

    def on_enqueued(self, event: Event) -> None:
        job = event.job
        assert job is not None, "an enqueued event has its job"
        key = (job.task, job.queue)
        with self._lock:
            self._enqueued[key] = self._enqueued.get(key, 0) + 1

    def on_ended(self, event: Event) -> None:
        """Count an attempt's end (or a rescue) with its duration, and the delay before
        the attempt started (every started attempt ends with one of these events)."""
        job = event.job
        assert job is not None, "an attempt's end or a rescue has its job"
        key = (job.task, job.queue, event.kind)
        started, finished = event.started_at, event.finished_at
        # Worked out before taking the lock, which then guards only the additions.
        delay = duration = None
        if started is not None:  # a clock step back counts as 0 (not max(): one call less)
            delay = started - job.run_at.timestamp()
            delay = delay if delay > 0.0 else 0.0
            if finished is not None:
                duration = finished - started if finished > started else 0.0
        with self._lock:
            ended = self._ended.get(key)
            if ended is None:
                ended = self._ended[key] = _Ended(self._delays_of(job.task, job.queue))
            ended.count += 1
            if delay is not None:
                ended.delays.observe(delay)
            if duration is not None:
                ended.durations.observe(duration)

    def _delays_of(self, task: str, queue: str) -> _Histogram:
        """The start delays of ``(task, queue)`` (called under the lock)."""
        delays = self._delays.get((task, queue))
        if delays is None:
            delays = self._delays[(task, queue)] = _Histogram(LATENCY_BUCKETS)
        return delays

    def collect(self) -> Iterable[Any]:
        with self._lock:
            enqueued = dict(self._enqueued)
            ended = {key: (n.count, n.durations.samples()) for key, n in self._ended.items()}
            delays = {
                key: histogram.samples()
                for key, histogram in self._delays.items()
                if histogram.counts_any()
            }
        yield _counter(
            "taskharbor_jobs_enqueued", "Jobs created by enqueues in this process.", enqueued
        )
        yield _counter(
            "taskharbor_job_outcomes",
            "Attempts ended in this process by outcome (succeeded, retrying, dead, cancelled, "
            "snoozed, released, lost) and leases rescued by its workers (rescued).",
            {key: count for key, (count, _) in ended.items()},
        )
        yield _histogram(
            "taskharbor_job_start_delay_seconds",
            "From when a job was due (enqueued, or its run_at, retry or snooze time) to the "
            "start of its attempt.",
            delays,
        )
        yield _histogram(
            "taskharbor_job_duration_seconds",
            "How long attempts ran, by outcome.",
            {key: samples for key, (_, samples) in ended.items() if samples[0][-1][1]},
        )


def _labels(key: tuple[str, ...]) -> list[str]:
    return ["task", "queue", "outcome"][: len(key)]


def _counter(name: str, documentation: str, values: dict[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=_labels(next(iter(values), ())))
    for key, count in sorted(values.items()):
        family.add_metric(list(key), count)
    return family


def _histogram(name: str, documentation: str, values: dict[Any, Samples]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=_labels(next(iter(values), ())))
    for key, (buckets, total) in sorted(values.items()):
        family.add_metric(list(key), buckets, total)
    return family


class WorkerCollector(Collector):
    """Slots and leases of the workers running in this process, read when scraped."""

    def __init__(self) -> None:
        self._workers: dict[int, Worker] = {}
        self._lock = threading.Lock()

    def on_worker(self, event: Event) -> None:
        worker = event.worker
        assert worker is not None, "a worker event has its worker"
        with self._lock:
            if event.kind == events.WORKER_STARTED:
                self._workers[id(worker)] = worker
            else:
                self._workers.pop(id(worker), None)

    def collect(self) -> Iterable[Any]:
        with self._lock:
            workers = list(self._workers.values())
        slots = GaugeMetricFamily(
            "taskharbor_worker_slots",
            "Jobs the workers of this process serving a queue may run at once (a worker "
            "serving several queues counts for each).",
            labels=["queue"],
        )
        by_queue: dict[str, int] = {}
        for worker in workers:
            for queue in worker.queues:
                by_queue[queue] = by_queue.get(queue, 0) + worker.concurrency
        for queue, count in sorted(by_queue.items()):
            slots.add_metric([queue], count)
        yield slots
        yield GaugeMetricFamily(
            "taskharbor_worker_busy_slots",
            "Slots of the workers of this process holding a job now.",
            value=sum(worker.busy for worker in workers),
        )
        yield GaugeMetricFamily(
            "taskharbor_worker_leases",
            "Leases the workers of this process hold now.",
            value=sum(worker.leases for worker in workers),
        )


class StoreCollector(Collector):
    """Jobs by queue and state, the age of each queue's longest-waiting ready job, and
    the live workers serving each queue, read from the store through the driver SPI at
    most once per ``interval`` seconds."""

    def __init__(self, app: App, interval: float) -> None:
        self.app = app
        self.interval = interval
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._counts: dict[tuple[str, JobState], int] = {}
        self._oldest: dict[str, float] = {}
        self._live: dict[str, int] | None = None
        """Live workers by queue; None when the store keeps no workers registry."""

    def collect(self) -> Iterable[Any]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.interval:
                try:
                    self._read()
                except Exception as error:  # a scrape must not fail: serve the last values
                    logger.warning("metrics: reading the store failed: %s", error)
                self._read_at = time.monotonic()
            counts, oldest, live = dict(self._counts), dict(self._oldest), self._live
        jobs = GaugeMetricFamily(
            "taskharbor_jobs", "Jobs in the store by queue and state.", labels=["queue", "state"]
        )
        for (queue, state), count in sorted(counts.items()):
            jobs.add_metric([queue, state.value], count)
        yield jobs
        age = GaugeMetricFamily(
            "taskharbor_oldest_ready_job_age_seconds",
            "How long the ready (available) job that waited longest has been ready, by queue "
            "(0 when none is ready).",
            labels=["queue"],
        )
        for queue in sorted({queue for queue, _ in counts}):
            age.add_metric([queue], oldest.get(queue, 0.0))
        yield age
        if live is not None:
            workers = GaugeMetricFamily(
                "taskharbor_live_workers",
                "Registered workers serving the queue that are not gone (unseen for their "
                "ttl), by queue: 0 for a queue with jobs or registered workers but none live.",
                labels=["queue"],
            )
            for queue in sorted(live.keys() | {queue for queue, _ in counts}):
                workers.add_metric([queue], live.get(queue, 0))
            yield workers

    def _read(self) -> None:
        driver = self.app.driver
        counts = {(queue, JobState(state)): n for (queue, state), n in driver.count().items()}
        now = driver.clock.now()
        oldest = {}
        for (queue, state), count in counts.items():
            if state is JobState.AVAILABLE and count:
                since = ready_since(self.app, queue)
                if since is not None:
                    oldest[queue] = max(0.0, (now - since).total_seconds())
        self._counts, self._oldest = counts, oldest
        self._live = live_workers(driver.list_workers()) if driver.capabilities.workers else None


def live_workers(workers: Iterable[WorkerRecord]) -> dict[str, int]:
    """How many of ``workers`` serve each queue and are not gone; queues whose
    workers are all gone count 0."""
    live: dict[str, int] = {}
    for worker in workers:
        for queue in worker.queues:
            live[queue] = live.get(queue, 0) + (0 if worker.gone else 1)
    return live


def ready_since(app: App, queue: str) -> datetime | None:
    """The earliest ``run_at`` of the queue's ready jobs, read page by page in id order
    only as far as needed: a job of a later page was created after the last job read,
    and is due no earlier than it was created, so once the earliest ``run_at`` seen is
    before that creation time, no later page can hold an earlier one."""
    where = JobFilter(states=frozenset({JobState.AVAILABLE}), queue=queue, limit=PAGE)
    earliest: datetime | None = None
    for page in _pages(app, where):
        page_earliest = min(job.run_at for job in page)
        earliest = page_earliest if earliest is None else min(earliest, page_earliest)
        if earliest <= page[-1].created_at:
            break
    return earliest


def _pages(app: App, where: JobFilter) -> Iterator[list[JobRecord]]:
    while page := app.driver.list_jobs(where):
        yield page
        if len(page) < where.limit:
            return
        where = dataclasses.replace(where, after_id=page[-1].id)
