"""Prometheus metrics of an app and its workers (``pip install 'taskharbor[prometheus]'``).

``metrics = instrument(app)`` subscribes to the app's events and registers the
collectors; ``metrics.serve(9464)`` serves them on ``/metrics`` (``taskharbor
worker --metrics-port 9464`` does both).  What is measured, and how:

* from events, in this process: ``taskharbor_jobs_enqueued_total``,
  ``taskharbor_job_outcomes_total`` (by task, queue and outcome),
  ``taskharbor_job_start_delay_seconds`` (from when a job was due to the
  start of its attempt) and ``taskharbor_job_duration_seconds``;
* from the store, read when scraped but at most once per ``store_interval``
  seconds (never per job): ``taskharbor_jobs`` by queue and state, and
  ``taskharbor_oldest_ready_job_age_seconds`` by queue;
* from the workers running in this process: ``taskharbor_worker_slots``,
  ``taskharbor_worker_busy_slots`` and ``taskharbor_worker_leases``.

docs/observability.md has a scrape configuration, alerts and dashboard panels.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from taskharbor.spec import JobFilter, JobRecord, JobState

from .. import events
from ..events import Event
from . import missing

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.core import GaugeMetricFamily
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
        self.enqueued = Counter(
            "taskharbor_jobs_enqueued",
            "Jobs created by enqueues in this process.",
            ["task", "queue"],
            registry=registry,
        )
        self.outcomes = Counter(
            "taskharbor_job_outcomes",
            "Attempts ended in this process by outcome (succeeded, retrying, dead, cancelled, "
            "snoozed, released, lost) and leases rescued by its workers (rescued).",
            ["task", "queue", "outcome"],
            registry=registry,
        )
        self.start_delay = Histogram(
            "taskharbor_job_start_delay_seconds",
            "From when a job was due (enqueued, or its run_at, retry or snooze time) to the "
            "start of its attempt.",
            ["task", "queue"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "taskharbor_job_duration_seconds",
            "How long attempts ran, by outcome.",
            ["task", "queue", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.workers = WorkerCollector()
        self.store = StoreCollector(app, store_interval)
        registry.register(self.workers)
        registry.register(self.store)
        self._unsubscribe = [
            app.events.subscribe(self._on_enqueued, events.ENQUEUED),
            app.events.subscribe(self._on_started, events.STARTED),
            app.events.subscribe(self._on_ended, *COUNTED),
            app.events.subscribe(self.workers.on_worker, events.WORKER_STARTED),
            app.events.subscribe(self.workers.on_worker, events.WORKER_STOPPED),
        ]
        self._server: WSGIServer | None = None

    def _on_enqueued(self, event: Event) -> None:
        job = event.job
        assert job is not None, "an enqueued event has its job"
        self.enqueued.labels(job.task, job.queue).inc()

    def _on_started(self, event: Event) -> None:
        job = event.job
        assert job is not None and event.started_at is not None, "a started event has both"
        waited = max(0.0, event.started_at - job.run_at.timestamp())
        self.start_delay.labels(job.task, job.queue).observe(waited)

    def _on_ended(self, event: Event) -> None:
        job = event.job
        assert job is not None, "an attempt's end or a rescue has its job"
        self.outcomes.labels(job.task, job.queue, event.kind).inc()
        duration = event.duration
        if duration is not None:
            self.duration.labels(job.task, job.queue, event.kind).observe(duration)

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
        for collector in (self.enqueued, self.outcomes, self.start_delay, self.duration):
            self.registry.unregister(collector)
        self.registry.unregister(self.workers)
        self.registry.unregister(self.store)


def instrument(
    app: App, *, registry: CollectorRegistry = REGISTRY, store_interval: float = STORE_INTERVAL
) -> Metrics:
    """Measure ``app`` and its workers in this process into ``registry`` (by default
    prometheus_client's global one, beside your own metrics)."""
    return Metrics(app, registry, store_interval)


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
    """Jobs by queue and state, and the age of each queue's longest-waiting ready job,
    read from the store through the driver SPI at most once per ``interval`` seconds."""

    def __init__(self, app: App, interval: float) -> None:
        self.app = app
        self.interval = interval
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._counts: dict[tuple[str, JobState], int] = {}
        self._oldest: dict[str, float] = {}

    def collect(self) -> Iterable[Any]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.interval:
                try:
                    self._read()
                except Exception as error:  # a scrape must not fail: serve the last values
                    logger.warning("metrics: reading the store failed: %s", error)
                self._read_at = time.monotonic()
            counts, oldest = dict(self._counts), dict(self._oldest)
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
