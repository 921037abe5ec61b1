"""The in-memory driver's stored rows: mutable inside the store, frozen records outside.

The driver mutates a :class:`JobRow` in place under its lock and hands callers
:class:`~taskharbor.spec.records.JobRecord` snapshots.  JSON payloads are
copied on the way in and out, so a caller that mutates a list it passed in (or
got back) never changes what is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from taskharbor.spec.flow import FlowLimits
from taskharbor.spec.keys import UNTIL_PRUNED, KeyScope
from taskharbor.spec.metadata import Progress
from taskharbor.spec.records import (
    JSON,
    ErrorInfo,
    JobId,
    JobRecord,
    ResultRef,
    WorkflowId,
    WorkflowRecord,
)
from taskharbor.spec.retry import DEFAULT_RETRY, RetryPolicy
from taskharbor.spec.table import JobState, WorkflowState


def copy_json(value: JSON) -> JSON:
    """A private copy of a JSON value: lists and dicts are rebuilt, scalars shared."""
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    return value


@dataclass(slots=True)
class JobRow:
    """One stored job.  Field meanings are those of :class:`JobRecord`.

    ``own_args`` are the args the job was enqueued with; ``args`` are the same
    until release puts a workflow step's input in front of them.  ``input`` is
    the step's result reference (in job ids) resolved at release;
    ``dependents`` are the ids of the workflow steps that list this job in
    their ``depends_on`` (the reverse edges, so finishing a step touches only
    its neighbours).
    """

    id: JobId
    task: str
    queue: str
    state: JobState
    own_args: tuple[JSON, ...]
    kwargs: dict[str, JSON]
    priority: int
    run_at: datetime
    max_attempts: int
    created_at: datetime
    attempt: int = 0
    idempotency_key: str | None = None
    lease_token: str | None = None
    lease_expires_at: datetime | None = None
    leased_by: str | None = None
    cancel_requested: bool = False
    result: JSON = None
    errors: list[ErrorInfo] = field(default_factory=list)
    finished_at: datetime | None = None
    reason: str | None = None
    workflow_id: WorkflowId | None = None
    depends_on: tuple[JobId, ...] = ()
    input: ResultRef | None = None
    retry: RetryPolicy = DEFAULT_RETRY
    flow: FlowLimits | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    meta: dict[str, JSON] = field(default_factory=dict)
    progress: Progress | None = None
    key_scope: KeyScope = UNTIL_PRUNED
    dependents: list[JobId] = field(default_factory=list)
    callback: bool = False
    """Whether the job is its workflow's failure callback (it waits until its workflow
    fails, and is not one of the workflow's steps)."""
    partial: bool = False
    """Whether the job is a partial step (it waits for its dependencies to end)."""
    args: tuple[JSON, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.args = self.own_args

    def snapshot(self) -> JobRecord:
        """The job as a frozen record that shares no mutable payload with the store."""
        return JobRecord(
            id=self.id,
            task=self.task,
            queue=self.queue,
            state=self.state,
            args=tuple([copy_json(arg) for arg in self.args]) if self.args else (),
            kwargs=copy_json(self.kwargs) if self.kwargs else {},
            priority=self.priority,
            run_at=self.run_at,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            created_at=self.created_at,
            idempotency_key=self.idempotency_key,
            lease_token=self.lease_token,
            lease_expires_at=self.lease_expires_at,
            leased_by=self.leased_by,
            cancel_requested=self.cancel_requested,
            result=copy_json(self.result),
            errors=tuple(self.errors),
            finished_at=self.finished_at,
            reason=self.reason,
            workflow_id=self.workflow_id,
            depends_on=self.depends_on,
            retry=self.retry,
            flow=self.flow,
            headers=dict(self.headers) if self.headers else {},
            tags=self.tags,
            meta=copy_json(self.meta) if self.meta else {},
            progress=self.progress,
            key_scope=self.key_scope,
        )


@dataclass(slots=True)
class WorkflowRow:
    """One stored workflow; ``steps`` are its job ids in graph order."""

    id: WorkflowId
    steps: tuple[JobId, ...]
    result: ResultRef
    created_at: datetime
    name: str | None = None
    state: WorkflowState = WorkflowState.RUNNING
    finished_at: datetime | None = None
    on_failure: JobId | None = None
    idempotency_key: str | None = None
    counted: tuple[JobId, ...] = ()
    """The steps that count when its state is derived: all but the tolerated ones."""
    partial: tuple[JobId, ...] = ()
    """Its partial steps, released at the end of a call that touched the workflow."""

    def jobs(self) -> tuple[JobId, ...]:
        """Every job of the workflow: its steps, then its failure callback if any."""
        return self.steps if self.on_failure is None else (*self.steps, self.on_failure)

    def snapshot(self) -> WorkflowRecord:
        return WorkflowRecord(
            id=self.id,
            state=self.state,
            steps=self.steps,
            result=copy_json(self.result),
            created_at=self.created_at,
            finished_at=self.finished_at,
            name=self.name,
            on_failure=self.on_failure,
            idempotency_key=self.idempotency_key,
        )
