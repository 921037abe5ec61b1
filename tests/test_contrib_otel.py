"""OpenTelemetry traces: a trace started by a producer continues in a worker process, workflow
steps link to their workflow's enqueue span, and each attempt's span has its outcome."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from test_engine_support import burst

import taskharbor as th
from taskharbor.contrib import otel

pytestmark = pytest.mark.timing

PROJECT = """
import os

import taskharbor as th
from taskharbor.contrib import otel

app = th.App("sqlite:///store.db")


@app.task(name="project.ok")
def ok(n: int) -> int:
    return n


@app.task(name="project.boom", max_attempts=1)
def boom() -> None:
    raise ValueError("boom")


@app.task(name="project.add")
def add(a: int, b: int = 1) -> int:
    return a + b


if os.environ.get("SPAN_FILE"):  # the worker process: its spans go to a file
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        def export(self, spans):
            with open(os.environ["SPAN_FILE"], "a") as file:
                for span in spans:
                    file.write(span.to_json(indent=None) + "\\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    otel.instrument(app, tracer_provider=provider)
"""


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def provider_for(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    (tmp_path / "project.py").write_text(PROJECT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SPAN_FILE", raising=False)
    module = importlib.import_module("project")
    yield module
    module.app.close()
    sys.modules.pop("project", None)


def trace_hex(trace_id: int) -> str:
    """A trace id as ``ReadableSpan.to_json`` writes it."""
    return f"0x{trace_id:032x}"


def span_hex(span_id: int) -> str:
    """A span id as ``ReadableSpan.to_json`` writes it."""
    return f"0x{span_id:016x}"


def test_a_trace_started_by_a_producer_continues_in_a_worker_process(
    project: Any, exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    provider = provider_for(exporter)
    otel.instrument(project.app, tracer_provider=provider)
    with provider.get_tracer("test").start_as_current_span("web request") as request:
        ok = project.ok.enqueue(7)
    boom = project.boom.enqueue()
    flow = project.app.enqueue(th.chain(project.add.s(1), project.add.s()), name="sum")

    spans_file = tmp_path / "worker-spans.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKHARBOR_")}
    env["SPAN_FILE"] = str(spans_file)
    script = Path(sys.executable).parent / "taskharbor"
    done = subprocess.run(
        [str(script), "--app", "project:app", "worker", "--burst"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    worker_spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    by_job = {span["attributes"]["messaging.message.id"]: span for span in worker_spans}
    produced = {span.name: span for span in exporter.get_finished_spans()}

    # The job enqueued inside a request: request -> send -> process, one trace id.
    send = next(
        s
        for s in exporter.get_finished_spans()
        if s.attributes.get("messaging.message.id") == str(ok.id)
    )
    assert send.kind is trace.SpanKind.PRODUCER and send.name == "send default"
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    process = by_job[str(ok.id)]
    assert process["context"]["trace_id"] == trace_hex(request.get_span_context().trace_id)
    assert process["parent_id"] == span_hex(send.context.span_id)
    assert process["kind"] == "SpanKind.CONSUMER" and process["name"] == "process default"
    assert process["attributes"] == {
        "messaging.system": "taskharbor",
        "messaging.destination.name": "default",
        "messaging.message.id": str(ok.id),
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.client.id": process["attributes"]["messaging.client.id"],
        "taskharbor.task": "project.ok",
        "taskharbor.job.attempt": 1,
        "taskharbor.job.outcome": "succeeded",
    }
    assert process["status"]["status_code"] == "UNSET"

    # A failure: the exception recorded, the span an error, the outcome dead.
    failed = by_job[str(boom.id)]
    assert failed["attributes"]["taskharbor.job.outcome"] == "dead"
    assert failed["status"]["status_code"] == "ERROR"
    (recorded,) = failed["events"]
    assert recorded["name"] == "exception"
    assert recorded["attributes"]["exception.type"] == "ValueError"
    assert recorded["attributes"]["exception.message"] == "boom"

    # Workflow steps: children of the workflow's enqueue span, and linked to it.
    enqueue_flow = produced["send workflow sum"]
    assert enqueue_flow.attributes["taskharbor.workflow.id"] == flow.id
    steps = [
        span for span in worker_spans if span["attributes"]["taskharbor.task"] == "project.add"
    ]
    assert len(steps) == 2
    for step in steps:
        assert step["context"]["trace_id"] == trace_hex(enqueue_flow.context.trace_id)
        assert step["parent_id"] == span_hex(enqueue_flow.context.span_id)
        (link,) = step["links"]
        assert link["context"]["span_id"] == span_hex(enqueue_flow.context.span_id)
        assert link["attributes"] == {"taskharbor.link": "workflow enqueue"}
    assert flow.result() == 3


def test_the_attempts_span_is_current_in_the_handler_and_a_snooze_is_no_error(
    exporter: InMemorySpanExporter,
) -> None:
    app = th.App("memory://")
    provider = provider_for(exporter)
    otel.instrument(app, tracer_provider=provider)
    tracer = provider.get_tracer("handler")
    snoozed: list[int] = []

    @app.task(name="work")
    async def work() -> None:
        with tracer.start_as_current_span("inner"):
            pass
        if not snoozed:
            snoozed.append(1)
            raise th.Snooze(0)

    job = work.enqueue()
    burst(app)
    spans = {
        (span.name, span.attributes.get("taskharbor.job.outcome")): span
        for span in exporter.get_finished_spans()
    }
    first, second = spans[("process default", "snoozed")], spans[("process default", "succeeded")]
    assert not first.events and first.status.status_code is trace.StatusCode.UNSET
    inner = [span for span in exporter.get_finished_spans() if span.name == "inner"]
    assert {span.parent.span_id for span in inner if span.parent} == {
        first.context.span_id,
        second.context.span_id,
    }
    assert (
        first.context.trace_id
        == second.context.trace_id
        == spans[("send default", None)].context.trace_id
    )
    assert app.get_job(job).state is th.JobState.SUCCEEDED


def test_a_job_whose_handler_never_ran_still_gets_its_span(exporter: InMemorySpanExporter) -> None:
    producer = th.App("memory://")
    producer.task(name="gone")(lambda: None)
    worker_app = th.App(driver=producer.driver)  # knows no task named "gone"
    otel.instrument(producer, tracer_provider=provider_for(exporter))
    otel.instrument(worker_app, tracer_provider=provider_for(exporter))
    producer.tasks["gone"].enqueue()
    burst(worker_app)
    send, process = sorted(exporter.get_finished_spans(), key=lambda span: span.start_time or 0)
    assert process.attributes["taskharbor.job.outcome"] == "dead"
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.status.status_code is trace.StatusCode.ERROR


@pytest.mark.parametrize("follow", [True, False])
def test_an_attempt_follows_the_producers_sampling_decision(
    exporter: InMemorySpanExporter, follow: bool
) -> None:
    app = th.App("memory://")
    unsampled = TracerProvider(sampler=ALWAYS_OFF)  # the producer keeps no trace
    otel.instrument(app, tracer_provider=unsampled)
    producer_span = unsampled.get_tracer("web").start_span("web request")
    worker_app = th.App(driver=app.driver)
    recording = TracerProvider(sampler=ALWAYS_ON)  # keeps children of unsampled parents too
    recording.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(worker_app, tracer_provider=recording, follow_producer_sampling=follow)
    seen: list[trace.SpanContext] = []

    @worker_app.task(name="work", max_attempts=1)
    def work(fail: bool) -> None:
        seen.append(trace.get_current_span().get_span_context())
        if fail:
            raise ValueError("boom")

    app.task(name="work", max_attempts=1)(work.fn)
    with trace.use_span(producer_span):
        app.tasks["work"].enqueue(False)
        app.tasks["work"].enqueue(True)
    burst(worker_app)
    producer = producer_span.get_span_context()
    assert not producer.trace_flags.sampled
    spans = exporter.get_finished_spans()
    if follow:
        # No span, not even for the failed attempt: the handler runs in the producer's
        # trace, under its (unsampled, remote) enqueue span.
        assert spans == ()
        assert {(c.trace_id, c.is_remote, c.trace_flags.sampled) for c in seen} == {
            (producer.trace_id, True, False)
        }
    else:
        # The worker's sampler was asked, and kept both attempts as children of the producer.
        assert sorted(span.attributes["taskharbor.job.outcome"] for span in spans) == [
            "dead",
            "succeeded",
        ]
        assert {
            (span.context.trace_id, span.parent.is_remote) for span in spans if span.parent
        } == {(producer.trace_id, True)}
        assert {context.span_id for context in seen} == {span.context.span_id for span in spans}
    assert [job.state for job in worker_app.list_jobs()] == [
        th.JobState.SUCCEEDED,
        th.JobState.DEAD,
    ]


class SeesTheCurrentSpan(th.Middleware):
    """An inner middleware: what is current while the store call runs; fails on demand."""

    def __init__(self) -> None:
        self.seen: list[trace.SpanContext] = []
        self.fail = False

    def around_enqueue(self, requests: Any, call_next: Any) -> Any:
        self.seen.append(trace.get_current_span().get_span_context())
        if self.fail:
            raise ValueError("store refused")
        return call_next(requests)


@pytest.mark.parametrize("sampled", [True, False])
def test_an_enqueue_span_is_current_during_the_store_call_sampled_or_not(
    exporter: InMemorySpanExporter, sampled: bool
) -> None:
    app = th.App("memory://")
    provider = TracerProvider(sampler=ALWAYS_ON if sampled else ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(app, tracer_provider=provider)
    inner = SeesTheCurrentSpan()
    app.use(inner)
    work = app.task(name="work")(lambda: None)
    job = work.enqueue()
    stored = trace.get_current_span(propagate.extract(dict(job.headers))).get_span_context()
    # What the store call ran under is what the job carries, sampled as the sampler said.
    (inside,) = inner.seen
    assert (inside.trace_id, inside.span_id) == (stored.trace_id, stored.span_id)
    assert stored.is_valid and stored.trace_flags.sampled is sampled
    inner.fail = True
    with pytest.raises(ValueError, match="store refused"):
        work.enqueue()
    assert trace.get_current_span() is trace.INVALID_SPAN  # made current only for the call
    spans = sorted(exporter.get_finished_spans(), key=lambda span: span.start_time or 0)
    if not sampled:
        assert spans == []
        return
    sent, failed = spans
    assert sent.context.span_id == stored.span_id
    assert sent.attributes["messaging.message.id"] == str(job.id)
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]


def test_an_attempt_of_an_unsampled_trace_keeps_what_else_is_current() -> None:
    """The producer's span is made current on top of the worker's own context (its
    baggage, say), not instead of it, whichever way the handler runs."""
    app = th.App("memory://")
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    otel.instrument(app, tracer_provider=unsampled)
    seen: dict[str, tuple[trace.SpanContext, object]] = {}

    @app.task(name="async_work")
    async def async_work() -> None:
        seen["async"] = (trace.get_current_span().get_span_context(), baggage.get_baggage("k"))

    @app.task(name="sync_work")
    def sync_work() -> None:
        seen["sync"] = (trace.get_current_span().get_span_context(), baggage.get_baggage("k"))

    with trace.use_span(unsampled.get_tracer("web").start_span("web request")):
        async_work.enqueue()
        sync_work.enqueue()
    token = otel_context.attach(baggage.set_baggage("k", "v"))
    try:
        burst(app)
    finally:
        otel_context.detach(token)
    (async_span, async_baggage), (sync_span, _) = seen["async"], seen["sync"]
    assert async_baggage == "v"
    assert async_span.trace_id == sync_span.trace_id
    assert async_span.is_valid and not async_span.trace_flags.sampled
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "taskharbor.contrib.otel")
    with pytest.raises(ImportError, match=r"pip install 'taskharbor\[otel\]'"):
        importlib.import_module("taskharbor.contrib.otel")
