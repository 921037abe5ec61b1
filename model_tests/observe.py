"""What the harness can observe of a store, in the model's ids, and how two views differ."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from taskharbor.spec import (
    Driver,
    JobFilter,
    JobId,
    JobRecord,
    JobState,
    WorkflowId,
    WorkflowNotFound,
    WorkflowRecord,
)
from taskharbor.spec.records import map_ref, ref_indexes

from .identity import IdentityMap

EVERY_JOB = JobFilter(limit=100_000)
"""A filter that selects every stored job (the harness stores far fewer)."""


def job_to_model(record: JobRecord, ids: IdentityMap) -> JobRecord:
    """The driver's record with every id, token and id-bearing reason in the model's terms."""
    return dataclasses.replace(
        record,
        id=ids.jobs.to_model(record.id),
        args=ids.args_to_model(record.id, record.args),
        kwargs=dict(record.kwargs),
        lease_token=(
            None if record.lease_token is None else ids.tokens.to_model(record.lease_token)
        ),
        reason=ids.reason_to_model(record.reason),
        workflow_id=(
            None if record.workflow_id is None else ids.workflows.to_model(record.workflow_id)
        ),
        depends_on=tuple(ids.jobs.to_model(dep) for dep in record.depends_on),
    )


def model_job(record: JobRecord) -> JobRecord:
    """The model's record, normalised the same way as a translated driver record."""
    return dataclasses.replace(record, kwargs=dict(record.kwargs))


def workflow_to_model(record: WorkflowRecord, ids: IdentityMap) -> WorkflowRecord:
    job_of = {step: ids.jobs.to_model(step) for step in ref_indexes(record.result)}
    return dataclasses.replace(
        record,
        id=ids.workflows.to_model(record.id),
        steps=tuple(ids.jobs.to_model(step) for step in record.steps),
        result=map_ref(record.result, job_of),
        on_failure=None if record.on_failure is None else ids.jobs.to_model(record.on_failure),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything observable of one store, in the model's ids.

    ``workflows`` maps every workflow the harness created to its record, or
    to ``None`` once the store no longer has it (pruned).
    """

    jobs: Mapping[JobId, JobRecord]
    counts: Mapping[tuple[str, JobState], int]
    workflows: Mapping[WorkflowId, WorkflowRecord | None]


def snapshot_model(store: Driver, workflow_ids: Iterable[WorkflowId]) -> Snapshot:
    jobs = {record.id: model_job(record) for record in store.list_jobs(EVERY_JOB)}
    workflows: dict[WorkflowId, WorkflowRecord | None] = {}
    for workflow_id in workflow_ids:
        try:
            workflows[workflow_id] = store.get_workflow(workflow_id)
        except WorkflowNotFound:
            workflows[workflow_id] = None
    return Snapshot(jobs, dict(store.count()), workflows)


def snapshot_driver(
    store: Driver, workflow_ids: Iterable[WorkflowId], ids: IdentityMap
) -> Snapshot:
    """The driver's view, translated; ``workflow_ids`` are the model's."""
    records = [job_to_model(record, ids) for record in store.list_jobs(EVERY_JOB)]
    jobs = {record.id: record for record in records}
    workflows: dict[WorkflowId, WorkflowRecord | None] = {}
    for workflow_id in workflow_ids:
        try:
            found = store.get_workflow(ids.workflows.to_driver(workflow_id))
        except WorkflowNotFound:
            workflows[workflow_id] = None
        else:
            workflows[workflow_id] = workflow_to_model(found, ids)
    return Snapshot(jobs, dict(store.count()), workflows)


Labels = tuple[str, str]
MODEL_DRIVER: Labels = ("model", "driver")


def record_differences(
    what: str, left: Any, right: Any, labels: Labels = MODEL_DRIVER
) -> list[str]:
    """Field by field differences of two records (plain values are compared whole)."""
    one, other = labels
    if type(left) is not type(right) or not dataclasses.is_dataclass(left):
        return [] if left == right else [f"{what}: {one}={left!r} {other}={right!r}"]
    return [
        f"{what}.{field.name}: {one}={getattr(left, field.name)!r} "
        f"{other}={getattr(right, field.name)!r}"
        for field in dataclasses.fields(left)
        if getattr(left, field.name) != getattr(right, field.name)
    ]


def snapshot_differences(
    left: Snapshot, right: Snapshot, labels: Labels = MODEL_DRIVER
) -> list[str]:
    """Every difference between two views (of two stores, or of one store at two times)."""
    one, other = labels
    problems: list[str] = []
    for job_id in sorted(left.jobs.keys() - right.jobs.keys()):
        problems.append(f"job {job_id}: in the {one}, not in the {other}")
    for job_id in sorted(right.jobs.keys() - left.jobs.keys()):
        problems.append(f"job {job_id}: in the {other}, not in the {one}")
    for job_id in sorted(left.jobs.keys() & right.jobs.keys()):
        problems += record_differences(
            f"job {job_id}", left.jobs[job_id], right.jobs[job_id], labels
        )
    if left.counts != right.counts:
        problems.append(f"count(): {one}={_sorted(left.counts)} {other}={_sorted(right.counts)}")
    for workflow_id in sorted(left.workflows):
        problems += record_differences(
            f"workflow {workflow_id}",
            left.workflows[workflow_id],
            right.workflows.get(workflow_id),
            labels,
        )
    return problems


def sequence_differences(what: str, model: Sequence[Any], driver: Sequence[Any]) -> list[str]:
    """Differences of two ordered results (records compared field by field)."""
    if len(model) != len(driver):
        return [
            f"{what}: model gave {len(model)} items {list(model)!r}, driver {len(driver)}: "
            f"{list(driver)!r}"
        ]
    problems: list[str] = []
    for index, (left, right) in enumerate(zip(model, driver, strict=True)):
        problems += record_differences(f"{what}[{index}]", left, right)
    return problems


def _sorted(counts: Mapping[tuple[str, JobState], int]) -> list[tuple[str, str, int]]:
    return sorted((queue, str(state), n) for (queue, state), n in counts.items())
