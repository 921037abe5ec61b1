"""OpenTelemetry traces of an app's jobs (``pip install 'taskharbor[otel]'``).

``instrument(app)`` adds a middleware and an event subscriber to the app:

* each enqueue (a job, a batch, a whole workflow) is a ``PRODUCER`` span
  (``send <queue>``); its W3C trace context (``traceparent``, ``tracestate``,
  through the globally configured propagator) is stored in the headers of
  every job it enqueues;
* each attempt is a ``CONSUMER`` span (``process <queue>``) whose parent is that
  stored context, so it continues the producer's trace in whichever process or
  host runs it; a workflow step also links to its workflow's enqueue span.
  The span is current while the handler runs (spans the handler makes are its
  children), records the exception the handler raised, and ends with the
  attempt's outcome once the store has recorded it.  An attempt whose stored
  context says the producer did not sample its trace makes no span: the
  producer's context is current while the handler runs, and the SDK is not
  asked (its default, parent-based samplers would drop the span anyway);
  ``instrument(app, follow_producer_sampling=False)`` asks the SDK's sampler
  for every attempt instead.

Attributes follow OpenTelemetry's messaging conventions (``messaging.system``
``taskharbor``, ``messaging.destination.name`` the queue,
``messaging.message.id`` the job id, ``messaging.operation.type`` ``send`` or
``process``) with ``taskharbor.task``, ``taskharbor.job.attempt`` and
``taskharbor.job.outcome``.  Only ``opentelemetry-api`` is needed: spans go
wherever the application's SDK (``TracerProvider``) sends them, and nowhere
without one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NamedTuple

from taskharbor.spec import EnqueueRequest, WorkflowGraph, WorkflowRecord

from .. import __version__, events
from ..context import JobCancelled, JobContext, Snooze
from ..events import Event, job_fields
from ..execution import context_for
from ..middleware import EnqueueCall, Middleware, WorkflowCall
from . import missing

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import (
        Link,
        Span,
        SpanContext,
        SpanKind,
        StatusCode,
        TracerProvider,
    )
except ImportError as error:  # pragma: no cover - the message is what is tested
    raise missing("opentelemetry-api", "otel", __name__) from error

if TYPE_CHECKING:
    from ..app import App
    from ..jobs import Job

SYSTEM = {"messaging.system": "taskharbor"}
WORKFLOW_LINK = {"taskharbor.link": "workflow enqueue"}
"""The attribute of the link from a workflow step's span to its workflow's enqueue span."""
FAILED = frozenset({events.RETRYING, events.DEAD, events.LOST})
"""Outcomes that mark the attempt's span as an error."""
NOT_ERRORS = (Snooze, JobCancelled)
"""What a handler raises to reschedule or stop: not recorded as the span's exception."""


class Tracing(Middleware):
    """The middleware and subscriber :func:`instrument` adds to an app."""

    def __init__(
        self,
        app: App,
        tracer_provider: TracerProvider | None = None,
        follow_producer_sampling: bool = True,
    ) -> None:
        self.app = app
        self.tracer = trace.get_tracer("taskharbor", __version__, tracer_provider=tracer_provider)
        self.follow_producer_sampling = follow_producer_sampling
        # By id(context), keeping the context alive; each entry is added on the thread that
        # runs the handler and popped on the event loop's (one dict operation each: atomic).
        # A spanless entry (None) is an attempt of an unsampled trace whose handler ran.
        self._open: dict[int, tuple[JobContext, Span | None]] = {}
        self._unsubscribe = app.events.subscribe(self._on_end, *events.ATTEMPT_ENDS)

    # -- producing ----------------------------------------------------------------

    def around_enqueue(
        self, requests: Sequence[EnqueueRequest], call_next: EnqueueCall
    ) -> list[Job]:
        queues = sorted({request.queue for request in requests})
        attributes: dict[str, Any] = {
            **SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "enqueue",
        }
        if len(queues) == 1:
            attributes["messaging.destination.name"] = queues[0]
        if len(requests) == 1:
            attributes["taskharbor.task"] = requests[0].task
        else:
            attributes["messaging.batch.message_count"] = len(requests)
        name = f"send {queues[0]}" if len(queues) == 1 else "send"
        span = self.tracer.start_span(name, kind=SpanKind.PRODUCER, attributes=attributes)
        with _made_current(span):
            carried = _carrier()
            jobs = call_next([_with_headers(request, carried) for request in requests])
            if len(jobs) == 1 and span.is_recording():
                span.set_attribute("messaging.message.id", str(jobs[0].id))
            return jobs

    def around_enqueue_workflow(
        self, graph: WorkflowGraph, call_next: WorkflowCall
    ) -> WorkflowRecord:
        attributes: dict[str, Any] = {
            **SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "enqueue_workflow",
            "messaging.batch.message_count": len(graph.steps),
        }
        if graph.name is not None:
            attributes["taskharbor.workflow.name"] = graph.name
        span = self.tracer.start_span(
            f"send workflow {graph.name or ''}".strip(),
            kind=SpanKind.PRODUCER,
            attributes=attributes,
        )
        with _made_current(span):
            carried = _carrier()
            steps = tuple(
                dataclasses.replace(step, request=_with_headers(step.request, carried))
                for step in graph.steps
            )
            on_failure = graph.on_failure
            if on_failure is not None:
                on_failure = _with_headers(on_failure, carried)
            record = call_next(dataclasses.replace(graph, steps=steps, on_failure=on_failure))
            span.set_attribute("taskharbor.workflow.id", record.id)
            return record

    # -- consuming ----------------------------------------------------------------

    def around_job(self, job: JobContext) -> _Current:
        parent = _parent(tuple(job.headers.items()))
        if parent.unsampled and self.follow_producer_sampling:
            # No span: the producer's trace, unsampled, goes on.  The attempt is marked
            # spanless so that its end need not parse the headers again to know it.
            self._open[id(job)] = (job, None)
            return _Current(parent.span, parent.alone)
        span = self._start(job, parent)
        self._open[id(job)] = (job, span)
        return _Attempt(span)

    def _start(self, job: JobContext, parent: _Parent, start_time: int | None = None) -> Span:
        links: tuple[Link, ...] = ()
        if job.workflow_id is not None and parent.span_context.is_valid:
            links = (Link(parent.span_context, WORKFLOW_LINK),)
        attributes = job_fields(job)
        attributes["messaging.operation.type"] = "process"
        attributes["messaging.operation.name"] = "process"
        return self.tracer.start_span(
            f"process {job.queue}",
            context=parent.context,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            start_time=start_time,
        )

    def _on_end(self, event: Event) -> None:
        """End the attempt's span with its outcome (a span is made now for an attempt
        whose handler never ran, such as a job of an unknown task)."""
        context = event.context
        found = None if context is None else self._open.pop(id(context), None)
        if found is not None:
            if found[1] is None:
                return  # an attempt of an unsampled trace: no span was made
            span = found[1]
        else:
            job = event.job
            assert job is not None, "an attempt's end has its job"
            parent = _parent(tuple(job.headers.items()))
            if parent.unsampled and self.follow_producer_sampling:
                return
            started = None if event.started_at is None else int(event.started_at * 1e9)
            span = self._start(context or context_for(job, None, None), parent, started)
        if not span.is_recording():
            return  # the SDK's sampler dropped it: nothing to set, nothing to end
        ended: dict[str, Any] = {"taskharbor.job.outcome": event.kind}
        if event.worker is not None:
            ended["messaging.client.id"] = event.worker.worker_id
        span.set_attributes(ended)
        if event.kind in FAILED:
            error = event.error
            span.set_status(
                StatusCode.ERROR, None if error is None else f"{error.type}: {error.message}"
            )
        finished = None if event.finished_at is None else int(event.finished_at * 1e9)
        span.end(end_time=finished)

    def close(self) -> None:
        """Stop ending spans (the middleware stays on the app: it has no way off)."""
        self._unsubscribe()


class _Current:
    """A span made current around the handler (a class, not a generator: it runs per
    attempt).  ``alone`` is the context holding just that span, made current as it is
    when no other context is current (the usual case: no new context per attempt)."""

    __slots__ = ("alone", "span", "token")

    def __init__(self, span: Span, alone: otel_context.Context | None = None) -> None:
        self.span = span
        self.alone = alone

    def __enter__(self) -> None:
        current = otel_context.get_current()
        if self.alone is not None and not current:
            self.token = otel_context.attach(self.alone)
        else:
            self.token = otel_context.attach(trace.set_span_in_context(self.span, current))

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        otel_context.detach(self.token)


class _Attempt(_Current):
    """The attempt's span made current around the handler, the handler's exception
    recorded on it."""

    __slots__ = ()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        otel_context.detach(self.token)
        if error is not None and not isinstance(error, NOT_ERRORS):
            self.span.record_exception(error)


def _made_current(span: Span) -> AbstractContextManager[object]:
    """``span`` current for an enqueue, ended after it (with the exception it raised
    recorded), as ``start_as_current_span`` does; a span its sampler dropped only needs
    to be current (so what the enqueue starts inherits the decision), which a plain
    attach and detach does for a fraction of the generators' cost."""
    if span.is_recording():
        return trace.use_span(span, end_on_exit=True)
    return _Current(span)


def instrument(
    app: App,
    *,
    tracer_provider: TracerProvider | None = None,
    follow_producer_sampling: bool = True,
) -> Tracing:
    """Trace ``app``'s enqueues and the attempts its workers in this process run; spans go
    to ``tracer_provider`` (default: the global one the application's SDK set up).

    With ``follow_producer_sampling`` (the default) an attempt whose stored trace context
    is not sampled makes no span and costs the SDK nothing, as the SDK's parent-based
    samplers (its default) would decide; ``False`` asks the provider's sampler for every
    attempt (a sampler that keeps attempts whose producer was not sampled)."""
    tracing = Tracing(app, tracer_provider, follow_producer_sampling)
    app.use(tracing)
    return tracing


class _Parent(NamedTuple):
    """The trace context stored in a job's headers, as an attempt uses it (a named tuple:
    made once per distinct context, which is once per job when each has its own trace)."""

    context: otel_context.Context
    span: Span
    """The producer's span (a remote, non-recording one; invalid when none was stored)."""
    span_context: SpanContext
    unsampled: bool
    """A valid context whose producer did not sample the trace."""
    alone: otel_context.Context | None
    """For an unsampled trace, a context holding only the producer's span (what its
    attempts make current when no other context is)."""


@functools.lru_cache(maxsize=256)
def _parent(headers: tuple[tuple[str, str], ...]) -> _Parent:
    """The trace context stored in a job's headers.  Jobs enqueued together (a batch, a
    workflow's steps) carry the same headers, and parsing them is most of what tracing an
    attempt costs TaskHarbor: the answer (immutable) is kept for the next one."""
    context = propagate.extract(dict(headers))
    span = trace.get_current_span(context)
    producer = span.get_span_context()
    if producer.is_valid and not producer.trace_flags.sampled:
        return _Parent(context, span, producer, True, trace.set_span_in_context(span, Context()))
    return _Parent(context, span, producer, False, None)


def _carrier() -> dict[str, str]:
    """The current trace context as headers (``traceparent``, ``tracestate``, ...)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _with_headers(request: EnqueueRequest, carried: Mapping[str, str]) -> EnqueueRequest:
    if not carried:
        return request
    return dataclasses.replace(request, headers={**request.headers, **carried})
