"""Prometheus metrics: exact counts after a known mix of outcomes, the store's gauges read
at most once per interval, the workers' gauges, and a real worker process scraped over HTTP."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_cli_support import CliStore, cli_store, one_error_line
from test_engine_support import EVENTUALLY, burst, eventually, running_worker
from test_events import MIX_OUTCOMES, mixed_app

import taskharbor as th
from taskharbor.contrib import prometheus
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.spec import FakeClock, WorkerInfo

pytestmark = pytest.mark.timing
__all__ = ["cli_store"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def outcomes(samples: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["task"], dict(labels)["outcome"]): count
        for (name, labels), count in samples.items()
        if name == "taskharbor_job_outcomes_total"
    }


def test_outcomes_latencies_and_the_stores_gauges_after_a_known_mix() -> None:
    app, _ = mixed_app()  # its jobs are enqueued before the metrics count enqueues
    registry = CollectorRegistry()
    metrics = prometheus.instrument(app, registry=registry)
    app.tasks["ok"].enqueue()
    burst(app, queues=["default"])
    app.tasks["ok"].options(queue="later").enqueue()  # left waiting in the store
    samples = scrape(registry)
    assert outcomes(samples) == {**MIX_OUTCOMES, ("ok", "succeeded"): 2}
    assert value(samples, "taskharbor_jobs_enqueued_total", task="ok", queue="default") == 1
    assert value(samples, "taskharbor_jobs_enqueued_total", task="ok", queue="later") == 1
    # One start delay per attempt, one duration per attempt's end.
    assert (
        value(samples, "taskharbor_job_start_delay_seconds_count", task="doomed", queue="default")
        == 2
    )
    assert (
        value(
            samples,
            "taskharbor_job_duration_seconds_count",
            task="doomed",
            queue="default",
            outcome="dead",
        )
        == 1
    )
    assert value(samples, "taskharbor_jobs", queue="default", state="succeeded") == 4
    assert value(samples, "taskharbor_jobs", queue="default", state="dead") == 2
    assert value(samples, "taskharbor_jobs", queue="default", state="cancelled") == 1
    assert value(samples, "taskharbor_jobs", queue="later", state="available") == 1
    assert value(samples, "taskharbor_oldest_ready_job_age_seconds", queue="default") == 0
    assert value(samples, "taskharbor_worker_busy_slots") == 0  # the burst worker has stopped
    assert not any(name == "taskharbor_worker_slots" for name, _ in samples)
    metrics.close()
    assert not app.events.wants("succeeded")
    assert generate_latest(registry) == b""


def test_a_rescue_adds_no_start_delay_sample_and_an_attempt_adds_one() -> None:
    """A rescue has no attempt start: counted as an outcome, it shows no start-delay
    histogram for its task and queue (not even an empty one) until an attempt starts."""
    app = th.App("memory://")
    registry = CollectorRegistry()
    prometheus.instrument(app, registry=registry)
    app.task(name="work")(lambda: None).enqueue()
    (record,) = app.driver.lease(["default"], 1, 30.0, "w1")
    app.events.emit(th.Event("rescued", job=record))
    samples = scrape(registry)
    assert outcomes(samples) == {("work", "rescued"): 1}
    assert not any(name.startswith("taskharbor_job_start_delay") for name, _ in samples)
    assert not any(name.startswith("taskharbor_job_duration") for name, _ in samples)
    started = record.run_at.timestamp() + 2.0
    app.events.emit(
        th.Event("succeeded", job=record, started_at=started, finished_at=started + 0.5)
    )
    samples = scrape(registry)
    assert outcomes(samples) == {("work", "rescued"): 1, ("work", "succeeded"): 1}
    delay = {"task": "work", "queue": "default"}
    assert value(samples, "taskharbor_job_start_delay_seconds_count", **delay) == 1
    assert value(samples, "taskharbor_job_start_delay_seconds_sum", **delay) == 2.0
    duration = {**delay, "outcome": "succeeded"}
    assert value(samples, "taskharbor_job_duration_seconds_sum", **duration) == 0.5


def test_the_oldest_ready_job_age_and_a_store_read_at_most_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock(datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    app = th.App(driver=MemoryDriver(clock))
    task = app.task(name="t")(lambda: None)
    for _ in range(5):
        task.enqueue()
        clock.advance(10)
    reads: list[str] = []
    for call in ("count", "list_jobs"):
        original = getattr(app.driver, call)
        monkeypatch.setattr(
            app.driver, call, lambda *a, _o=original, _c=call: reads.append(_c) or _o(*a)
        )
    monkeypatch.setattr(prometheus, "PAGE", 2)
    registry = CollectorRegistry()
    prometheus.instrument(app, registry=registry, store_interval=3600)
    samples = scrape(registry)
    assert value(samples, "taskharbor_oldest_ready_job_age_seconds", queue="default") == 50
    assert value(samples, "taskharbor_jobs", queue="default", state="available") == 5
    # The first page's earliest ready job is older than anything a later page holds.
    assert reads == ["count", "list_jobs"]
    clock.advance(100)
    assert scrape(registry) == samples  # within the interval: the store is not read again
    assert reads == ["count", "list_jobs"]


def test_the_earliest_ready_job_may_be_on_a_later_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job retried comes back ready later than jobs enqueued after it, so the lowest id
    is not the longest wait: pages are read until none can hold an earlier one."""
    clock = FakeClock(datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    app = th.App(driver=MemoryDriver(clock))
    task = app.task(name="t")(lambda: None)
    first = task.options(run_at=clock.now() + timedelta(seconds=100)).enqueue()
    clock.advance(1)
    others = [task.enqueue() for _ in range(3)]
    clock.advance(200)
    app.driver.promote()
    monkeypatch.setattr(prometheus, "PAGE", 1)
    assert prometheus.ready_since(app, "default") == others[0].created_at
    assert app.get_job(first).run_at > others[0].created_at


def registered(driver: MemoryDriver, worker_id: str, queues: tuple[str, ...], ttl: float) -> None:
    info = WorkerInfo(worker_id, "host", 1, queues, 4, "1.0", ttl)
    driver.register_workers([info])


def test_live_workers_per_queue_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    driver = MemoryDriver(clock)
    app = th.App(driver=driver)
    app.task(name="t", queue="later")(lambda: None).enqueue()  # no worker serves it
    registered(driver, "steady", ("default", "urgent"), ttl=1000)
    registered(driver, "silent", ("default", "mail"), ttl=10)
    clock.advance(20)  # "silent" is gone: unseen for longer than its ttl
    reads: list[str] = []
    original = driver.list_workers
    monkeypatch.setattr(driver, "list_workers", lambda: reads.append("workers") or original())
    registry = CollectorRegistry()
    prometheus.instrument(app, registry=registry, store_interval=3600)
    samples = scrape(registry)
    live = {
        dict(labels)["queue"]: count
        for (name, labels), count in samples.items()
        if name == "taskharbor_live_workers"
    }
    assert live == {"default": 1, "urgent": 1, "mail": 0, "later": 0}
    driver.deregister_workers(["steady"])
    assert scrape(registry) == samples  # within the interval: the registry is not read again
    assert reads == ["workers"]


def test_no_live_workers_gauge_without_a_registry() -> None:
    class NoRegistry(MemoryDriver):
        capabilities = dataclasses.replace(MemoryDriver.capabilities, workers=False)

    app = th.App(driver=NoRegistry())
    app.task(name="t")(lambda: None).enqueue()
    registry = CollectorRegistry()
    prometheus.instrument(app, registry=registry)
    samples = scrape(registry)
    assert value(samples, "taskharbor_jobs", queue="default", state="available") == 1
    assert not any(name == "taskharbor_live_workers" for name, _ in samples)


def test_worker_gauges_while_a_job_runs() -> None:
    app = th.App("memory://")
    registry = CollectorRegistry()
    prometheus.instrument(app, registry=registry)
    entered, release = threading.Event(), threading.Event()

    @app.task(name="slow")
    def slow() -> None:
        entered.set()
        release.wait(EVENTUALLY)

    job = slow.enqueue()
    with running_worker(app, concurrency=3, queues=["default", "urgent"]):
        eventually(entered.is_set, what="the job started")
        samples = scrape(registry)
        release.set()
        app.wait(job, timeout=EVENTUALLY)
    assert value(samples, "taskharbor_worker_slots", queue="default") == 3
    assert value(samples, "taskharbor_worker_slots", queue="urgent") == 3
    assert value(samples, "taskharbor_worker_busy_slots") == 1
    assert value(samples, "taskharbor_worker_leases") == 1
    after = scrape(registry)
    assert value(after, "taskharbor_worker_busy_slots") == 0
    assert not any(name == "taskharbor_worker_slots" for name, _ in after)


PROJECT = f"""
import sys

sys.path.insert(0, {str(Path(__file__).parent)!r})

import taskharbor as th
from test_events import declare_mixed_tasks

app = th.App("sqlite:///store.db")
declare_mixed_tasks(app)
"""

ENQUEUE = """
from project import app

for name, task in app.tasks.items():
    task.enqueue()
app.tasks["refused"].options(queue="other").enqueue()
"""

EXPECTED = {
    **{(task, "default", outcome): count for (task, outcome), count in MIX_OUTCOMES.items()},
    ("refused", "other", "dead"): 1,
}


def test_a_worker_process_serves_exact_counts_on_its_metrics_port(tmp_path: Path) -> None:
    (tmp_path / "project.py").write_text(PROJECT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKHARBOR_")}
    subprocess.run([sys.executable, "-c", ENQUEUE], cwd=tmp_path, env=env, check=True)
    script = Path(sys.executable).parent / "taskharbor"
    worker = subprocess.Popen(
        [
            *(str(script), "--app", "project:app", "worker", "-q", "default", "-q", "other"),
            *("--poll-interval", "0.05", "--metrics-port", "0", "--metrics-addr", "127.0.0.1"),
        ],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = _metrics_url(worker)

        def counted() -> dict[tuple[str, str, str], float]:
            return {
                (labels["task"], labels["queue"], labels["outcome"]): count
                for (name, frozen), count in scrape_url(url).items()
                if name == "taskharbor_job_outcomes_total"
                for labels in [dict(frozen)]
            }

        eventually(lambda: sum(counted().values()) >= sum(EXPECTED.values()), what="outcomes")
        time.sleep(0.2)  # nothing more may come: the counts are exact, not at least
        assert counted() == EXPECTED
        samples = scrape_url(url)
        assert value(samples, "taskharbor_worker_slots", queue="other") == 8

        def stored(queue: str, state: str) -> float:
            return scrape_url(url).get(
                ("taskharbor_jobs", frozenset({("queue", queue), ("state", state)})), 0
            )

        # The store's gauges are read again once their interval (5 s) has passed.
        eventually(lambda: stored("default", "succeeded") == 3, what="the store's gauges")
        assert (stored("default", "dead"), stored("other", "dead")) == (2, 1)
        delays = "taskharbor_job_start_delay_seconds_count"
        assert value(samples, delays, task="doomed", queue="default") == 2
    finally:
        worker.send_signal(signal.SIGTERM)
        _, log = worker.communicate(timeout=EVENTUALLY)
    assert worker.returncode == 0, log


def scrape_url(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=EVENTUALLY) as response:
        return parse(response.read().decode())


def _metrics_url(worker: subprocess.Popen[str]) -> str:
    """The URL the worker logged when it began serving its metrics."""
    assert worker.stderr is not None
    seen = []
    for line in worker.stderr:
        seen.append(line)
        found = re.search(r"metrics on (http://\S+/metrics)", line)
        if found:
            threading.Thread(target=worker.stderr.read, daemon=True).start()  # keep draining
            return found.group(1)
    raise AssertionError(f"the worker never served metrics:\n{''.join(seen)}")


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "taskharbor.contrib.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'taskharbor\[prometheus\]'"):
        importlib.import_module("taskharbor.contrib.prometheus")


def test_the_worker_command_refuses_a_port_in_use(cli_store: CliStore) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli_store.run(
            "worker", "--burst", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1"
        )
    assert result.exit_code == 2
    assert f"--metrics-port {port}: cannot listen on 127.0.0.1" in one_error_line(result)
