"""Running one job's handler and turning what happened into a report for the driver.

Shared by :class:`~taskharbor.worker.Worker` and the testing kit, so both
decide outcomes, retry times and log lines the same way.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from taskharbor.spec import (
    JOB,
    JSON,
    Completion,
    ErrorReport,
    Failure,
    InvalidRequest,
    JobEvent,
    JobRecord,
    JobState,
    SnoozeRequest,
    retry_delay,
)
from taskharbor.spec.records import NAME_MAX_LENGTH, check_json
from taskharbor.spec.schedules import tick_of

from . import threads
from .context import JobCancelled, JobContext, PermanentError, Snooze, enter_job, leave_job
from .events import RETRYING, Event, job_fields, outcome_kind
from .middleware import Middleware, around_job

if TYPE_CHECKING:
    from .task import Task
    from .worker import Worker

logger = logging.getLogger("taskharbor")

FIELDS = "taskharbor_fields"
"""The log record attribute holding a line's structured fields (a dict), if it has any."""

MESSAGE_LIMIT = 2_000
"""Longest error message kept per attempt (characters); longer ones are cut."""
TRACEBACK_LIMIT = 8_000
"""Longest traceback kept per attempt; its end (the raising frame) is what is kept."""


@dataclass(frozen=True, slots=True)
class Succeeded:
    result: JSON


@dataclass(frozen=True, slots=True)
class Failed:
    error: ErrorReport
    retry_at: datetime | None
    permanent: bool = False
    decided_at: datetime | None = None
    """The store's time when ``retry_at`` was set (for the log's "in 4.2s")."""
    exception: BaseException | None = None
    """What the handler raised, when it raised (for event subscribers)."""


@dataclass(frozen=True, slots=True)
class Snoozed:
    run_at: datetime
    decided_at: datetime | None = None
    """The store's time when the snooze was asked (for the log's "in 60s")."""


Outcome = Succeeded | Failed | Snoozed


def context_for(record: JobRecord, timeout: float | None, now: datetime | None) -> JobContext:
    """The handler's view of a freshly leased job; ``now`` (when it was leased) is needed
    only to place the deadline of a task with a timeout."""
    if timeout is None:
        deadline = None
    elif now is None:
        raise ValueError(f"job {record.id}: a task with a timeout needs the lease time")
    else:
        deadline = now + timedelta(seconds=timeout)
    made_by = None if record.idempotency_key is None else tick_of(record)
    return JobContext(
        id=record.id,
        task=record.task,
        queue=record.queue,
        attempt=record.attempt,
        max_attempts=record.max_attempts,
        deadline=deadline,
        schedule=None if made_by is None else made_by[0],
        tick=None if made_by is None else made_by[1],
        headers=record.headers,
        workflow_id=record.workflow_id,
    )


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} characters cut] ..."


_RUNNER_MODULES = frozenset(
    {
        __name__,
        threads.__name__,
        f"{__package__}.worker",
        "asyncio.futures",
        "asyncio.tasks",
        "concurrent.futures.thread",
    }
)
"""Modules whose frames lead up to a handler; left out of stored tracebacks."""


def _from_handler(tb: TracebackType | None) -> TracebackType | None:
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in _RUNNER_MODULES:
        tb = tb.tb_next
    return tb


def error_report(exc: BaseException) -> ErrorReport:
    """A bounded report of an exception: type, message, and the traceback from the handler down.

    The message is cut at ``MESSAGE_LIMIT``; the traceback keeps its last
    frames (where the error was raised) within ``TRACEBACK_LIMIT``.
    """
    name, message = type(exc).__qualname__[:NAME_MAX_LENGTH], _cut(str(exc), MESSAGE_LIMIT)
    last_line = f"{name}: {message}\n" if message else f"{name}\n"
    frames = traceback.format_tb(_from_handler(exc.__traceback__))
    kept: list[str] = []
    room = TRACEBACK_LIMIT - len(last_line)
    for frame in reversed(frames):
        if len(frame) > room:
            kept.append(f"  ... [{len(frames) - len(kept)} earlier frames cut] ...\n")
            break
        kept.append(frame)
        room -= len(frame)
    trace = "Traceback (most recent call last):\n" + "".join(reversed(kept)) + last_line
    return ErrorReport(type=name, message=message, traceback=trace)


def unknown_task(record: JobRecord) -> Failed:
    """A job whose task no registered handler has: retrying cannot help."""
    message = (
        f"no task named {record.task!r} is registered on this worker's app "
        "(is the module that defines it imported?)"
    )
    return Failed(ErrorReport("UnknownTask", message), None, permanent=True)


def cancelled(record: JobRecord) -> Failed:
    """The attempt stopped because somebody cancelled the job: the driver ends it ``cancelled``."""
    return Failed(ErrorReport("Cancelled", f"job {record.id} was cancelled while running"), None)


def timed_out(record: JobRecord, task: Task[Any], now: datetime) -> Failed:
    """The attempt ran past the task's timeout: a failed attempt like any other (a
    ``TimeoutError`` to the task's ``retry_on``/``no_retry_on``)."""
    limit = task.defaults.timeout
    message = f"attempt {record.attempt} ran longer than the task's timeout ({limit} s)"
    if not task.defaults.retries(TimeoutError(message)):
        return Failed(ErrorReport("Timeout", message), None, permanent=True)
    return Failed(ErrorReport("Timeout", message), retry_time(record, task, now), decided_at=now)


def retry_time(record: JobRecord, task: Task[Any], now: datetime) -> datetime:
    """When the next attempt may run: by the retry policy stored with the job, through
    the function a rescue uses too (so a failure and a rescue of one attempt wait the
    same), or by the task's custom formula, which only the worker can run."""
    attempt = max(1, record.attempt)
    backoff = task.defaults.backoff
    if backoff.custom_formula:
        return now + timedelta(seconds=backoff.delay(attempt, record.id))
    return now + retry_delay(record.retry, record.id, attempt)


def outcome_of_value(value: object, task: Task[Any]) -> Outcome:
    """A handler's return value: encoded by the app's codec, and stored as the result
    when that is JSON."""
    try:
        encoded = task.payloads.encode_result(value)
        check_json(encoded, "result")
    except Exception as exc:
        message = f"the handler returned a value that cannot be stored: {exc}"
        return Failed(ErrorReport("InvalidResult", message), None, permanent=True)
    return Succeeded(encoded)


def outcome_of_error(
    exc: BaseException, record: JobRecord, task: Task[Any], now: datetime
) -> Outcome:
    """What an exception raised by a handler means for the job."""
    if isinstance(exc, Snooze):
        return Snoozed(now + timedelta(seconds=exc.seconds), now)
    if isinstance(exc, JobCancelled):
        return cancelled(record)
    if isinstance(exc, PermanentError) or not task.defaults.retries(exc):
        return Failed(error_report(exc), None, permanent=True, exception=exc)
    return Failed(error_report(exc), retry_time(record, task, now), decided_at=now, exception=exc)


def call_sync(
    task: Task[Any], record: JobRecord, context: JobContext, middleware: Sequence[Middleware]
) -> Any:
    """Run a sync handler in the calling thread, inside the job middleware, its stored
    arguments decoded to its parameters' types (a payload that does not decode raises
    :class:`~taskharbor.codec.PayloadError`: the job goes to ``dead`` at once)."""
    token = enter_job(context)
    try:
        with around_job(middleware, context):
            args, kwargs = task.payloads.decode_call(record.args, record.kwargs)
            return task.fn(*args, **kwargs)
    finally:
        leave_job(token)


async def call_async(
    task: Task[Any], record: JobRecord, context: JobContext, middleware: Sequence[Middleware]
) -> Any:
    """Run an async handler in the current task, inside the job middleware."""
    token = enter_job(context)
    try:
        with around_job(middleware, context):
            args, kwargs = task.payloads.decode_call(record.args, record.kwargs)
            return await task.fn(*args, **kwargs)
    finally:
        leave_job(token)


def attempt_event(
    kind: str,
    record: JobRecord,
    context: JobContext | None,
    started_at: float,
    finished_at: float | None,
    *,
    outcome: Outcome | None = None,
    worker: Worker | None = None,
) -> Event:
    """The event of ``kind`` about an attempt of ``record`` (ended with ``outcome``, when it
    has one): what the worker and the testing kit fire."""
    failed = outcome if isinstance(outcome, Failed) else None
    run_at = None
    if isinstance(outcome, Snoozed):
        run_at = outcome.run_at
    elif failed is not None and kind == RETRYING:
        run_at = failed.retry_at
    return Event(
        kind,
        job=record,
        context=context,
        worker=worker,
        started_at=started_at,
        finished_at=finished_at,
        error=None if failed is None else failed.error,
        exception=None if failed is None else failed.exception,
        run_at=run_at,
    )


def report_for(outcome: Outcome, record: JobRecord) -> Completion | Failure | SnoozeRequest:
    """The fenced driver request that reports ``outcome`` under the job's lease."""
    token = record.lease_token
    if token is None:
        raise InvalidRequest(f"job {record.id} has no lease token: it was not leased")
    if isinstance(outcome, Succeeded):
        return Completion(record.id, token, outcome.result)
    if isinstance(outcome, Snoozed):
        return SnoozeRequest(record.id, token, outcome.run_at)
    return Failure(record.id, token, outcome.error, outcome.retry_at, outcome.permanent)


def expected_state(outcome: Outcome, record: JobRecord, cancel_requested: bool) -> JobState:
    """The state the driver will move the job to (the contract's table decides; for logs
    and event subscribers)."""
    if isinstance(outcome, Succeeded):
        event = JobEvent.SUCCEED
    elif isinstance(outcome, Snoozed):
        event = JobEvent.SNOOZE
    else:
        event = JobEvent.FAIL
    permanent = isinstance(outcome, Failed) and outcome.permanent
    return _resolved(event, cancel_requested, permanent, record.attempt >= record.max_attempts)


@functools.cache
def _resolved(
    event: JobEvent, cancel_requested: bool, permanent: bool, attempts_exhausted: bool
) -> JobState:
    """The table's answer for a running job, once per combination of facts (a dozen):
    it is asked per attempt."""
    facts = {
        "cancel_requested": cancel_requested,
        "permanent": permanent,
        "attempts_exhausted": attempts_exhausted,
    }
    return JobState(JOB.resolve(event, JobState.RUNNING, facts))


def log_outcome(
    record: JobRecord,
    outcome: Outcome,
    state: JobState,
    seconds: float,
    worker_id: str | None = None,
) -> None:
    """One INFO line per finished attempt: id, task, attempt, the new state, how long the
    attempt ran and, when it runs again, when that is::

        job 3 demo.flaky_upload attempt 1/3 -> retrying; ran 0.011s;
            next attempt at 12:00:03 UTC (in 4.2s); ConnectionError: storage timed out

    The same facts go with the record as fields (:data:`FIELDS`), named as the tracing
    integration names its span attributes, for ``worker --log-format json``.
    """
    parts = [f"ran {seconds:.3f}s"]
    fields = job_fields(record)
    fields["taskharbor.job.outcome"] = outcome_kind(state, isinstance(outcome, Snoozed))
    fields["taskharbor.job.max_attempts"] = record.max_attempts
    fields["taskharbor.job.duration_seconds"] = round(seconds, 6)
    if worker_id is not None:
        fields["taskharbor.worker.id"] = worker_id
    if isinstance(outcome, Snoozed):
        parts.append(f"runs again at {_when(outcome.run_at, outcome.decided_at)}")
        fields["taskharbor.job.run_at"] = outcome.run_at.astimezone(UTC).isoformat()
    elif isinstance(outcome, Failed):
        if state == JobState.RETRYING and outcome.retry_at is not None:
            parts.append(f"next attempt at {_when(outcome.retry_at, outcome.decided_at)}")
            fields["taskharbor.job.run_at"] = outcome.retry_at.astimezone(UTC).isoformat()
        parts.append(f"{outcome.error.type}: {outcome.error.message}")
        fields["exception.type"] = outcome.error.type
        fields["exception.message"] = outcome.error.message
    logger.info(
        "job %d %s attempt %d/%d -> %s; %s",
        record.id,
        record.task,
        record.attempt,
        record.max_attempts,
        state,
        "; ".join(parts),
        extra={FIELDS: fields},
    )


def _when(at: datetime, since: datetime | None) -> str:
    """``12:00:03 UTC (in 4.2s)``: the clock time (with the date unless it is ``since``'s
    day) and, when ``since`` is known, how far ahead of it."""
    at_utc = at.astimezone(UTC)
    same_day = since is not None and since.astimezone(UTC).date() == at_utc.date()
    text = at_utc.strftime("%H:%M:%S UTC" if same_day else "%Y-%m-%d %H:%M:%S UTC")
    if since is not None:
        text += f" (in {_duration((at - since).total_seconds())})"
    return text


def _duration(seconds: float) -> str:
    """``4.2s``, ``90s``, ``2h05m``: short, and exact enough to read at a glance."""
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"
