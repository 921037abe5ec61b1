"""Invariants of the contract that hold for any store after any call.

They are checked on the model as well as on the driver: the model is the
oracle, but an oracle that breaks the contract's own invariants is a bug too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

from taskharbor.spec import (
    FINISHED_JOB_STATES,
    WORKFLOW_CANCELLED,
    JobId,
    JobRecord,
    JobState,
    WorkflowRecord,
    WorkflowState,
    derive_workflow_state,
)

from .observe import Snapshot


def not_utc(moments: dict[str, datetime | None]) -> list[str]:
    """The named datetimes that are not aware UTC times (the SPI returns only those)."""
    return [
        f"{name}={moment!r} is not in UTC"
        for name, moment in moments.items()
        if moment is not None and moment.utcoffset() != timedelta(0)
    ]


def job_problems(job: JobRecord) -> list[str]:
    """What is wrong with one stored job on its own."""
    if not isinstance(job.state, JobState):
        return [f"job {job.id}: state {job.state!r} is not a JobState"]
    problems = not_utc(
        {
            "run_at": job.run_at,
            "created_at": job.created_at,
            "lease_expires_at": job.lease_expires_at,
            "finished_at": job.finished_at,
        }
        | {f"errors[{index}].at": error.at for index, error in enumerate(job.errors)}
    )
    running = job.state is JobState.RUNNING
    lease_fields = {
        "lease_token": job.lease_token,
        "lease_expires_at": job.lease_expires_at,
        "leased_by": job.leased_by,
    }
    for name, value in lease_fields.items():
        if (value is not None) != running:
            problems.append(f"{name}={value!r} while {job.state}")
    if job.cancel_requested and not running:
        problems.append(f"cancel_requested while {job.state}")
    if not 0 <= job.attempt <= job.max_attempts:
        problems.append(f"attempt {job.attempt} outside 0..max_attempts={job.max_attempts}")
    finished = job.state in FINISHED_JOB_STATES
    if (job.finished_at is not None) != finished:
        problems.append(f"finished_at={job.finished_at} while {job.state}")
    # a running step whose workflow was cancelled already holds its cancel's reason
    recorded = (
        running
        and job.cancel_requested
        and job.workflow_id is not None
        and job.reason == WORKFLOW_CANCELLED
    )
    if (job.reason is not None) != (job.state is JobState.CANCELLED or recorded):
        problems.append(f"reason={job.reason!r} while {job.state}")
    return [f"job {job.id}: {problem}" for problem in problems]


def workflow_problems(
    workflow: WorkflowRecord,
    jobs: Mapping[JobId, JobRecord],
    tolerated: Collection[JobId] = (),
    partial: Collection[JobId] = (),
) -> list[str]:
    """What is wrong with ``workflow`` in ``jobs``; ``tolerated`` and ``partial`` hold
    the ids of the steps so marked in its graph."""
    if not isinstance(workflow.state, WorkflowState):
        return [f"workflow {workflow.id}: state {workflow.state!r} is not a WorkflowState"]
    members = (
        workflow.steps if workflow.on_failure is None else (*workflow.steps, workflow.on_failure)
    )
    missing = [step for step in members if step not in jobs]
    if missing:
        return [f"workflow {workflow.id}: steps {missing} are gone but the workflow is not"]
    steps = [jobs[step] for step in workflow.steps]
    problems = not_utc({"created_at": workflow.created_at, "finished_at": workflow.finished_at})
    counted = (step.state for step in steps if step.id not in tolerated)
    expected = derive_workflow_state(counted, workflow.state)
    if workflow.state is not expected:
        problems.append(f"state {workflow.state}, but its steps make it {expected}")
    if (workflow.finished_at is not None) != (workflow.state is not WorkflowState.RUNNING):
        problems.append(f"finished_at={workflow.finished_at} while {workflow.state}")
    for step in steps:
        if step.workflow_id != workflow.id:
            problems.append(f"step {step.id} says it belongs to workflow {step.workflow_id}")
        awaited = FINISHED_JOB_STATES if step.id in partial else {JobState.SUCCEEDED}
        waiting = any(jobs[dep].state not in awaited for dep in step.depends_on)
        if step.state is JobState.PENDING and not waiting:
            problems.append(f"step {step.id} is pending but its dependencies are done")
    if workflow.on_failure is not None:
        callback = jobs[workflow.on_failure]
        if workflow.on_failure in workflow.steps or callback.depends_on:
            problems.append(f"failure callback {callback.id} is a step or waits on steps")
        if callback.workflow_id != workflow.id:
            problems.append(f"failure callback {callback.id} names workflow {callback.workflow_id}")
    return [f"workflow {workflow.id}: {problem}" for problem in problems]


def snapshot_problems(
    view: Snapshot, tolerated: Collection[JobId] = (), partial: Collection[JobId] = ()
) -> list[str]:
    """Every invariant broken by one store's state (``tolerated`` and ``partial``: the
    steps so marked in the graphs the harness enqueued)."""
    problems: list[str] = []
    for job in view.jobs.values():
        problems += job_problems(job)
    tokens = Counter(job.lease_token for job in view.jobs.values() if job.lease_token)
    problems += [f"lease token {token!r} held by {n} jobs" for token, n in tokens.items() if n > 1]
    counted = Counter((job.queue, job.state) for job in view.jobs.values())
    if dict(counted) != dict(view.counts):
        problems.append(f"count() {dict(view.counts)} disagrees with the stored jobs {counted}")
    for workflow in view.workflows.values():
        if workflow is not None:
            problems += workflow_problems(workflow, view.jobs, tolerated, partial)
    return problems
