"""``th.Job``: what the application sees of a stored job."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taskharbor.spec import (
    FINISHED_JOB_STATES,
    JSON,
    UNTIL_PRUNED,
    ErrorInfo,
    FlowLimits,
    JobId,
    JobRecord,
    JobState,
    KeyScope,
    Progress,
)


def progress_label(progress: Progress) -> str:
    """``42%`` or ``42% 420 of 1000 rows``: the percentage rounded down, so that only a
    job that said 1.0 shows 100%."""
    percent = f"{math.floor(progress.value * 100)}%"
    return percent if progress.message is None else f"{percent} {progress.message}"


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job, as stored when it was read.

    Read it again with ``app.get_job(job.id)``.  ``attempt`` counts the
    attempts used so far; ``errors`` holds one entry per failed attempt (type,
    message, traceback, when).  ``result`` is the handler's return value once
    the job has ``succeeded``, as the task's return annotation says when the
    app that read it has the task (see :mod:`taskharbor.codec`; a stored result
    that no longer fits raises ``PayloadError`` there), and ``stored_result`` is
    its JSON as stored.  ``reason`` says why a job was cancelled (or,
    on a running workflow step whose workflow was cancelled, why it will be).
    The lease's fencing token stays inside the worker and is not shown here.
    ``headers`` are the ones it was enqueued with (a trace context, say).
    ``flow`` holds the flow limits the job carries (its key, concurrency,
    sequence and rate limit), if any.  ``tags`` and ``meta`` are the ones it was
    enqueued with; ``progress`` is what its current or last attempt last reported
    (``progress.value`` from 0 to 1, ``progress.message``), ``None`` before any.
    sequence and rate limit), if any.  ``key_scope`` says how long the job holds
    its ``idempotency_key`` (until pruned, while unfinished, or for a window from
    enqueue).  ``created`` is set on what an enqueue returned: ``True`` when it
    stored this job, ``False`` when the request's key was held and this job is
    the holder (nothing was stored); ``None`` on a job read any other way.  It
    takes no part in comparisons.
    """

    id: JobId
    task: str
    queue: str
    state: JobState
    args: tuple[JSON, ...]
    kwargs: Mapping[str, JSON]
    priority: int
    attempt: int
    max_attempts: int
    run_at: datetime
    created_at: datetime
    finished_at: datetime | None
    stored_result: JSON
    errors: tuple[ErrorInfo, ...]
    reason: str | None
    idempotency_key: str | None
    cancel_requested: bool
    leased_by: str | None
    lease_expires_at: datetime | None
    workflow_id: int | None
    depends_on: tuple[JobId, ...]
    headers: Mapping[str, str] = field(default_factory=dict)
    flow: FlowLimits | None = None
    tags: tuple[str, ...] = ()
    meta: Mapping[str, JSON] = field(default_factory=dict)
    progress: Progress | None = None
    decode_result: Callable[[JSON], Any] | None = field(default=None, repr=False, compare=False)
    """How the app that read the job turns ``stored_result`` into its task's return type."""
    key_scope: KeyScope = UNTIL_PRUNED
    created: bool | None = field(default=None, compare=False)

    @classmethod
    def from_record(
        cls,
        record: JobRecord,
        decode_result: Callable[[JSON], Any] | None = None,
        *,
        created: bool | None = None,
    ) -> Job:
        """The public view of a driver's record; ``decode_result`` decodes its result,
        ``created`` is what an enqueue said."""
        return cls(
            id=record.id,
            task=record.task,
            queue=record.queue,
            state=record.state,
            args=record.args,
            kwargs=record.kwargs,
            priority=record.priority,
            attempt=record.attempt,
            max_attempts=record.max_attempts,
            run_at=record.run_at,
            created_at=record.created_at,
            finished_at=record.finished_at,
            stored_result=record.result,
            errors=record.errors,
            reason=record.reason,
            idempotency_key=record.idempotency_key,
            cancel_requested=record.cancel_requested,
            leased_by=record.leased_by,
            lease_expires_at=record.lease_expires_at,
            workflow_id=record.workflow_id,
            depends_on=record.depends_on,
            headers=record.headers,
            flow=record.flow,
            tags=record.tags,
            meta=record.meta,
            progress=record.progress,
            decode_result=decode_result,
            key_scope=record.key_scope,
            created=created,
        )

    @property
    def result(self) -> Any:
        """The handler's return value (``None`` until the job succeeded), decoded."""
        if self.decode_result is None or self.state != JobState.SUCCEEDED:
            return self.stored_result
        return self.decode_result(self.stored_result)

    @property
    def finished(self) -> bool:
        """Whether the job reached an end (succeeded, dead or cancelled)."""
        return self.state in FINISHED_JOB_STATES

    @property
    def last_error(self) -> ErrorInfo | None:
        """The error of the latest failed attempt, if any."""
        return self.errors[-1] if self.errors else None
