"""The JSON the CLI prints with ``--json``: stable shapes for scripts.

Every datetime is ISO 8601 in UTC; absent values are ``null``.  The shapes are
documented in docs/cli.md; change them only in a backward-compatible way
(adding keys).  A lease's fencing token is never shown: it belongs to the
worker that holds the lease.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from taskharbor.spec import (
    JobId,
    JobRecord,
    JobState,
    WorkflowId,
    WorkflowRecord,
    WorkflowState,
)
from taskharbor.spec.diagrams import Lifecycle
from taskharbor.spec.keys import key_window
from taskharbor.spec.lifecycle import (
    JOB_GUARDS,
    WORKFLOW_GUARDS,
    JobLifecycle,
    WorkflowLifecycle,
)
from taskharbor.spec.records import map_ref
from taskharbor.spec.table import JOB, WORKFLOW


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 text of an aware datetime, or None."""
    return None if moment is None else moment.isoformat()


def job_shape(job: JobRecord) -> dict[str, Any]:
    """One job: what ``jobs list``, ``jobs show`` and the bulk commands print."""
    lease = None
    if job.state == JobState.RUNNING:
        lease = {
            "leased_by": job.leased_by,
            "expires_at": iso(job.lease_expires_at),
            "cancel_requested": job.cancel_requested,
        }
    return {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "state": job.state.value,
        "priority": job.priority,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "args": list(job.args),
        "kwargs": dict(job.kwargs),
        "run_at": iso(job.run_at),
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
        "result": job.result,
        "reason": job.reason,
        "idempotency_key": job.idempotency_key,
        "key_scope": None if job.idempotency_key is None else key_scope_shape(job),
        "lease": lease,
        "errors": [
            {
                "attempt": error.attempt,
                "at": iso(error.at),
                "type": error.type,
                "message": error.message,
                "traceback": error.traceback,
            }
            for error in job.errors
        ],
        "workflow_id": job.workflow_id,
        "depends_on": list(job.depends_on),
        "headers": dict(job.headers),
        "tags": list(job.tags),
        "meta": dict(job.meta),
        "progress": None
        if job.progress is None
        else {"value": job.progress.value, "message": job.progress.message},
    }


def key_scope_shape(job: JobRecord) -> dict[str, Any]:
    """How long the job holds its key: ``hold`` (``pruned``, ``unfinished`` or
    ``window``), and for a window its ``seconds`` and the instant it ``ends``."""
    window = key_window(job.key_scope)
    return {
        "hold": job.key_scope.hold.value,
        "seconds": job.key_scope.seconds,
        "ends": None if window is None else iso(job.created_at + window),
    }


def job_list_shape(
    jobs: Sequence[JobRecord], next_id: JobId | None, newest_first: bool = False
) -> dict[str, Any]:
    """A page of jobs; ``next_after`` (``next_before`` with ``--newest-first``) is the
    option value of the next page (null: last page)."""
    return {"jobs": [job_shape(job) for job in jobs], **_next_page(next_id, newest_first)}


def _next_page(next_id: int | None, newest_first: bool) -> dict[str, int | None]:
    return {
        "next_after": None if newest_first else next_id,
        "next_before": next_id if newest_first else None,
    }


def workflow_summary(workflow: WorkflowRecord) -> dict[str, Any]:
    """One workflow in a listing: its steps as job ids (``workflows show`` has the rest)."""
    return {
        "id": workflow.id,
        "name": workflow.name,
        "state": workflow.state.value,
        "created_at": iso(workflow.created_at),
        "finished_at": iso(workflow.finished_at),
        "steps": list(workflow.steps),
    }


def workflow_list_shape(
    workflows: Sequence[WorkflowRecord], next_id: WorkflowId | None, newest_first: bool
) -> dict[str, Any]:
    """A page of workflows, paged like :func:`job_list_shape`."""
    return {
        "workflows": [workflow_summary(workflow) for workflow in workflows],
        **_next_page(next_id, newest_first),
    }


def workflow_shape(workflow: WorkflowRecord, steps: Sequence[JobRecord]) -> dict[str, Any]:
    """A workflow and its steps in graph order; ``result`` once it has succeeded."""
    result = None
    if workflow.state == WorkflowState.SUCCEEDED:
        result = map_ref(workflow.result, {step.id: step.result for step in steps})
    return {
        "id": workflow.id,
        "name": workflow.name,
        "state": workflow.state.value,
        "created_at": iso(workflow.created_at),
        "finished_at": iso(workflow.finished_at),
        "result": result,
        "steps": [
            {
                "id": step.id,
                "task": step.task,
                "queue": step.queue,
                "state": step.state.value,
                "attempt": step.attempt,
                "max_attempts": step.max_attempts,
                "depends_on": list(step.depends_on),
                "reason": step.reason,
                "finished_at": iso(step.finished_at),
            }
            for step in steps
        ],
    }


def stats_shape(
    now: datetime,
    counts: Mapping[str, Mapping[JobState, int]],
    oldest_ready: Mapping[str, float],
) -> dict[str, Any]:
    """Counts per queue and state (every state, zeros included), and per queue the
    age in seconds of its oldest ``available`` job (null when none is ready)."""
    totals = dict.fromkeys((state.value for state in JobState), 0)
    queues: dict[str, Any] = {}
    for queue in sorted(counts):
        per_state = {state.value: counts[queue].get(state, 0) for state in JobState}
        for state, count in per_state.items():
            totals[state] += count
        queues[queue] = {
            "counts": per_state,
            "total": sum(per_state.values()),
            "oldest_ready_age_seconds": oldest_ready.get(queue),
        }
    return {"now": iso(now), "queues": queues, "totals": totals, "total": sum(totals.values())}


def lifecycle_shape(lifecycle: Lifecycle) -> dict[str, Any]:
    """A lifecycle's states and transitions (``spec diagram --json``), from the spec's
    table: the same facts the diagrams draw."""
    machine, table, guards = (
        (JobLifecycle, JOB, JOB_GUARDS)
        if lifecycle == "job"
        else (WorkflowLifecycle, WORKFLOW, WORKFLOW_GUARDS)
    )
    return {
        "lifecycle": lifecycle,
        "states": list(table.states),
        "initial": next(state.id for state in machine.states if state.initial),
        "final_states": sorted(table.final_states),
        "guards": dict(guards),
        "transitions": [
            {
                "event": event,
                "source": source,
                "target": choice.target,
                "guards": list(choice.guards),
                "unless": list(choice.unless),
            }
            for event in sorted(table.events)
            for source in table.states
            for choice in table.options(event, source)
        ],
    }


def dumps(shape: object) -> str:
    """The JSON text the CLI prints: indented, keys in the documented order."""
    return json.dumps(shape, indent=2, ensure_ascii=False)
