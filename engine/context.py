"""What a handler can know and say about the job it runs.

``th.current_job()`` gives the running job's :class:`JobContext`; a handler
raises :class:`Snooze` to run again later without using an attempt, or
:class:`PermanentError` to go straight to the dead-letter queue.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from taskharbor.spec import JobId, Progress
from taskharbor.spec.records import check_seconds


class Snooze(Exception):
    """Raise in a handler to run the job again in ``seconds``; the attempt is given back."""

    def __init__(self, seconds: float) -> None:
        self.seconds = check_seconds(seconds, "Snooze seconds")
        super().__init__(f"snoozed for {seconds} s")


class PermanentError(Exception):
    """Raise in a handler when retrying cannot help: the job goes straight to ``dead``."""


class JobCancelled(Exception):
    """Raised by :meth:`JobContext.raise_if_cancelled` once the job was asked to stop."""


@dataclass(frozen=True)
class JobContext:
    """The job a handler is running: read it with ``th.current_job()``.

    ``attempt`` counts from 1.  ``deadline`` is when the task's timeout ends
    the attempt (``None`` without a timeout).  Cancellation (``app.cancel``
    on a running job, a workflow cascade, or a worker shutting down) sets
    :attr:`cancel_event`: an ``async`` handler is also cancelled outright, a
    sync handler should look at :attr:`cancelled` between steps of long work.
    """

    id: JobId
    task: str
    queue: str
    attempt: int
    max_attempts: int
    deadline: datetime | None
    schedule: str | None = None
    """The periodic schedule that made this job (``app.periodic``), if one did."""
    tick: datetime | None = None
    """The schedule's tick this job runs for (UTC; an operator's ``schedules run``: when
    it was asked); ``None`` for a job no schedule made."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """The headers the job was enqueued with (``EnqueueRequest.headers``: a trace
    context, for instance), read-only."""
    workflow_id: int | None = None
    """The workflow this job is a step of (``None`` for a job enqueued on its own)."""

    def set_progress(self, value: float, message: str | None = None) -> None:
        """Say how far the job is: ``value`` the fraction done, from 0.0 to 1.0 (a count
        belongs in ``message``, as in ``"420 of 1000 rows"``; at most 256 characters).

        Cheap to call often: the worker stores only the latest value, with its next
        lease heartbeat (fenced by the lease, like the heartbeat), so a job shorter
        than a heartbeat interval may never show one.  A new attempt starts without
        progress.  Bad values raise ``InvalidRequest``.
        """
        self._progress.latest = Progress(value, message)

    @property
    def progress(self) -> Progress | None:
        """The latest progress this attempt set (stored or not yet)."""
        box: _ProgressBox | None = self.__dict__.get("_progress")
        return None if box is None else box.latest

    def unsent_progress(self) -> Progress | None:
        """The latest progress if the store does not have it yet (for the heartbeat)."""
        box: _ProgressBox | None = self.__dict__.get("_progress")
        if box is None or box.latest is box.stored:
            return None
        return box.latest

    def progress_stored(self, progress: Progress) -> None:
        """The store has ``progress`` now: the next heartbeat need not carry it."""
        self._progress.stored = progress

    @functools.cached_property
    def _progress(self) -> _ProgressBox:
        """Made on first use: most jobs never report progress."""
        return _ProgressBox()

    @functools.cached_property
    def cancel_event(self) -> threading.Event:
        """Set when somebody asks this job to stop; a sync handler may ``wait`` on it to
        sleep interruptibly.  Made on first use: most jobs never look at it."""
        return threading.Event()

    @property
    def cancelled(self) -> bool:
        """Whether somebody asked this job to stop."""
        event = self.__dict__.get("cancel_event")
        return event is not None and event.is_set()

    @property
    def last_attempt(self) -> bool:
        """Whether a failure now would send the job to the dead-letter queue."""
        return self.attempt >= self.max_attempts

    def raise_if_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if the job was asked to stop (for sync handlers)."""
        if self.cancelled:
            raise JobCancelled(f"job {self.id} was asked to stop")


class _ProgressBox:
    """A job's latest progress and the one its store has (set from the handler's thread,
    read by the worker's heartbeat: each a single reference assignment)."""

    __slots__ = ("latest", "stored")

    def __init__(self) -> None:
        self.latest: Progress | None = None
        self.stored: Progress | None = None


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("taskharbor_current_job")


def current_job() -> JobContext:
    """The job the calling handler runs; a clear error outside a handler."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "th.current_job() was called outside a job handler (no job is running here)"
        ) from None


def enter_job(context: JobContext) -> contextvars.Token[JobContext]:
    """Make ``context`` the current job of this thread or task, until :func:`leave_job`.

    A token pair rather than a context manager: it runs once per job on the
    worker's hot path, where a generator-based ``with`` costs more than the job.
    """
    return _current.set(context)


def leave_job(token: contextvars.Token[JobContext]) -> None:
    """Undo the :func:`enter_job` that gave ``token``."""
    _current.reset(token)
