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


def record_differences(what: str, model: Any, driver: Any) -> list[str]:
    """Field by field differences of two records (plain values are compared whole)."""
    if type(model) is not type(driver) or not dataclasses.is_dataclass(model):
        return [] if model == driver else [f"{what}: model={model!r} driver={driver!r}"]
    return [
        f"{what}.{field.name}: model={getattr(model, field.name)!r} "
        f"driver={getattr(driver, field.name)!r}"
        for field in dataclasses.fields(model)
        if getattr(model, field.name) != getattr(driver, field.name)
    ]


def snapshot_differences(model: Snapshot, driver: Snapshot) -> list[str]:
    problems: list[str] = []
    for job_id in sorted(model.jobs.keys() - driver.jobs.keys()):
        problems.append(f"job {job_id}: stored by the model, missing from the driver")
    for job_id in sorted(driver.jobs.keys() - model.jobs.keys()):
        problems.append(f"job {job_id}: stored by the driver, not by the model")
    for job_id in sorted(model.jobs.keys() & driver.jobs.keys()):
        problems += record_differences(f"job {job_id}", model.jobs[job_id], driver.jobs[job_id])
    if model.counts != driver.counts:
        problems.append(f"count(): model={_sorted(model.counts)} driver={_sorted(driver.counts)}")
    for workflow_id in sorted(model.workflows):
        problems += record_differences(
            f"workflow {workflow_id}",
            model.workflows[workflow_id],
            driver.workflows.get(workflow_id),
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
