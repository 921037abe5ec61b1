"""Event hooks: subscribe, in process, to what happens to jobs and workers.

``app.events.subscribe(callback, "dead", "retrying")`` (or the decorator
``@app.on("dead")``) calls ``callback(event)`` with an :class:`Event` each time
one of those things happens in this process.  The metrics and tracing
integrations (``taskharbor.contrib``) are subscribers like any other; so is
an alert to a chat room or an error tracker, without wrapping handlers.

Which process fires what:

* ``enqueued`` (one per job created; an idempotent hit creates none) and
  ``workflow_enqueued`` (one per enqueue of a workflow; a repeat of a
  workflow's idempotency key fires it with the workflow it found) fire in
  the process that enqueues, once the store has the jobs;
* the worker fires ``started`` as an attempt starts, and one outcome per
  attempt once the store has recorded it: ``succeeded``, ``retrying``,
  ``dead``, ``cancelled`` or ``snoozed``; ``released`` when a stopping worker
  gives a running job back, ``lost`` when an attempt's outcome cannot be
  recorded (its lease was lost); ``rescued`` for each expired lease its
  maintenance pass rescued (the job as it is after the rescue, ``retrying``
  or ``dead``); ``worker_started`` and ``worker_stopped``.

Callbacks run synchronously: producer events in the enqueueing thread,
worker events on the worker's event loop thread, so a callback must be quick
(hand slow work such as a network call to a thread or a queue of its own).
An exception in a callback is logged and never reaches the job or the worker.
With nobody subscribed to a kind, the worker does not even build its events.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from taskharbor.spec import ErrorReport, InvalidRequest, JobRecord, JobState, WorkflowRecord

if TYPE_CHECKING:
    from .context import JobContext
    from .worker import Worker

logger = logging.getLogger("taskharbor")

ENQUEUED = "enqueued"
WORKFLOW_ENQUEUED = "workflow_enqueued"
STARTED = "started"
SUCCEEDED = "succeeded"
RETRYING = "retrying"
DEAD = "dead"
CANCELLED = "cancelled"
SNOOZED = "snoozed"
RELEASED = "released"
LOST = "lost"
RESCUED = "rescued"
WORKER_STARTED = "worker_started"
WORKER_STOPPED = "worker_stopped"

OUTCOMES = (SUCCEEDED, RETRYING, DEAD, CANCELLED, SNOOZED)
"""What an attempt's recorded outcome can be (:attr:`Event.kind`)."""
OUTCOMES_OR_LOST = frozenset({*OUTCOMES, LOST})
"""The kinds a reported outcome may fire as (``lost`` when the store refuses it)."""
ATTEMPT_ENDS = (*OUTCOMES, RELEASED, LOST)
"""Every kind that ends an attempt a ``started`` event began."""
KINDS = (
    ENQUEUED,
    WORKFLOW_ENQUEUED,
    STARTED,
    *ATTEMPT_ENDS,
    RESCUED,
    WORKER_STARTED,
    WORKER_STOPPED,
)
"""Every kind of event, in the order of a job's life."""

_OUTCOME_OF_STATE = {
    JobState.SUCCEEDED: SUCCEEDED,
    JobState.RETRYING: RETRYING,
    JobState.DEAD: DEAD,
    JobState.CANCELLED: CANCELLED,
}


def outcome_kind(state: JobState, snoozed: bool) -> str:
    """The outcome kind of an attempt that moves its job to ``state`` (a snooze is
    ``snoozed`` whether it makes the job scheduled or available at once)."""
    return SNOOZED if snoozed else _OUTCOME_OF_STATE[state]


@dataclass(slots=True)
class Event:
    """Something that happened: ``kind`` says what, the other fields say to what.

    Every subscriber of a kind gets the same event: read it, never change it.  (It is
    not frozen only because a frozen dataclass costs twice as much to build, on a path
    that runs per attempt.)

    ``job`` is the job as it was enqueued, leased for the attempt, or (for
    ``rescued``) as the rescue left it: not read again, so its ``state`` is not
    the outcome; ``kind`` is.  Times are seconds since the epoch
    (``time.time()``) on this machine.
    """

    kind: str
    job: JobRecord | None = None
    context: JobContext | None = None
    """The handler's :class:`~taskharbor.JobContext` of the attempt (``started`` and the
    kinds that end an attempt; ``None`` when no handler was called, e.g. an unknown task)."""
    workflow: WorkflowRecord | None = None
    worker: Worker | None = None
    started_at: float | None = None
    """When the attempt started (``started`` and the kinds that end an attempt)."""
    finished_at: float | None = None
    """When the handler returned or raised (the kinds that end an attempt)."""
    error: ErrorReport | None = None
    """What the failed attempt reported (``retrying``, ``dead``, ``cancelled``)."""
    exception: BaseException | None = None
    """The exception the handler raised, when it raised one (for an error tracker)."""
    run_at: datetime | None = None
    """When the job runs again (``retrying``, ``snoozed``)."""

    @property
    def duration(self) -> float | None:
        """How long the attempt ran, in seconds (the kinds that end an attempt)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)


Subscriber = Callable[[Event], None]
F = TypeVar("F", bound=Subscriber)


class Events:
    """The subscribers of one app, by kind.  ``app.events`` is the app's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Replaced whole on each change (copy on write): emit reads it without a lock.
        self._by_kind: Mapping[str, tuple[Subscriber, ...]] = {}
        self.heard: frozenset[str] = frozenset()
        """The kinds somebody listens to now (``heard.isdisjoint(kinds)``: one C call)."""

    def subscribe(self, callback: Subscriber, *kinds: str) -> Callable[[], None]:
        """Call ``callback(event)`` for each event of these kinds (every kind if none
        is given); returns a function that unsubscribes it."""
        if not callable(callback):
            raise InvalidRequest(f"an event subscriber must be callable, not {callback!r}")
        unknown = [kind for kind in kinds if kind not in KINDS]
        if unknown:
            raise InvalidRequest(
                f"unknown event kind(s) {', '.join(map(repr, unknown))} "
                f"(one of: {', '.join(KINDS)})"
            )
        chosen = tuple(dict.fromkeys(kinds)) or KINDS
        with self._lock:
            by_kind = dict(self._by_kind)
            for kind in chosen:
                by_kind[kind] = (*by_kind.get(kind, ()), callback)
            self._by_kind, self.heard = by_kind, frozenset(by_kind)

        def unsubscribe() -> None:
            with self._lock:
                by_kind = dict(self._by_kind)
                for kind in chosen:
                    left = list(by_kind.get(kind, ()))
                    if callback in left:
                        left.remove(callback)
                    if left:
                        by_kind[kind] = tuple(left)
                    else:
                        by_kind.pop(kind, None)
                self._by_kind, self.heard = by_kind, frozenset(by_kind)

        return unsubscribe

    def on(self, *kinds: str) -> Callable[[F], F]:
        """``@app.on("dead")``: :meth:`subscribe` as a decorator (the function is kept)."""

        def register(callback: F) -> F:
            self.subscribe(callback, *kinds)
            return callback

        return register

    def wants(self, kind: str) -> bool:
        """Whether anybody listens to ``kind``: the check that keeps events free unheard."""
        return kind in self._by_kind

    def emit(self, event: Event) -> None:
        """Call every subscriber of the event's kind, in the order they subscribed."""
        for callback in self._by_kind.get(event.kind, ()):
            try:
                callback(event)
            except Exception:
                logger.exception("event subscriber %r failed on a %s event", callback, event.kind)


class JobLike(Protocol):
    """What :func:`job_fields` reads: a stored job or a handler's context."""

    @property
    def id(self) -> int: ...
    @property
    def task(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def attempt(self) -> int: ...


def job_fields(record: JobLike) -> dict[str, Any]:
    """A job's attributes as the integrations name them, after OpenTelemetry's messaging
    conventions: span attributes (``contrib.otel``) and JSON log fields carry these keys."""
    return {
        "messaging.system": "taskharbor",
        "messaging.destination.name": record.queue,
        "messaging.message.id": str(record.id),
        "taskharbor.task": record.task,
        "taskharbor.job.attempt": record.attempt,
    }
