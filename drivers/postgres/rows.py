"""Rows of the PostgreSQL driver's tables, read back as the spec's records."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from taskharbor.spec import (
    ErrorInfo,
    JobRecord,
    JobState,
    Progress,
    WorkflowRecord,
    WorkflowState,
)
from taskharbor.spec.flow import flow_from_text
from taskharbor.spec.keys import scope_from_text
from taskharbor.spec.retry import policy_from_text

from ..corrupt_rows import (
    decode_job,
    payload_args,
    payload_headers,
    payload_kwargs,
    payload_meta,
    payload_tags,
)

JOB_FIELDS = (
    "id",
    "task",
    "queue",
    "state",
    "args",
    "kwargs",
    "priority",
    "run_at",
    "attempt",
    "max_attempts",
    "created_at",
    "idempotency_key",
    "lease_token",
    "lease_expires_at",
    "leased_by",
    "cancel_requested",
    "result",
    "errors",
    "finished_at",
    "reason",
    "workflow_id",
    "depends_on",
    "retry",
    "headers",
    "flow",
    "tags",
    "meta",
    "progress",
    "progress_message",
    "key_scope",
)
"""The columns a :class:`JobRecord` is read from (the record's fields, in order)."""


def job_columns(alias: str = "j") -> sql.Composed:
    """``j.id, j.task, ...``: the columns of :data:`JOB_FIELDS` on table alias ``alias``
    (a job's key is in ``given_up_key`` once it gave the key up to a newer job)."""
    return sql.SQL(", ").join(
        sql.SQL("COALESCE({}, {}) AS idempotency_key").format(
            sql.Identifier(alias, name), sql.Identifier(alias, "given_up_key")
        )
        if name == "idempotency_key"
        else sql.Identifier(alias, name)
        for name in JOB_FIELDS
    )


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


def error_info(stored: Mapping[str, Any]) -> ErrorInfo:
    """One element of the ``errors`` column: ``{attempt, at, report: {type, message, ...}}``."""
    report = stored["report"]
    return ErrorInfo(
        attempt=stored["attempt"],
        at=datetime.fromisoformat(stored["at"]).astimezone(UTC),
        type=report["type"],
        message=report["message"],
        traceback=report.get("traceback"),
    )


def job_record(row: Mapping[str, Any]) -> JobRecord:
    """A :class:`JobRecord` from a row holding at least :data:`JOB_FIELDS`.

    Raises :class:`CorruptJob` naming the job if the row was edited into
    something this driver never writes.
    """
    return decode_job(row, _job_record)


def _job_record(row: Mapping[str, Any]) -> JobRecord:
    return JobRecord(
        id=row["id"],
        task=row["task"],
        queue=row["queue"],
        state=JobState(row["state"]),
        args=payload_args(row["args"]),
        kwargs=payload_kwargs(row["kwargs"]),
        priority=row["priority"],
        run_at=row["run_at"].astimezone(UTC),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        created_at=row["created_at"].astimezone(UTC),
        idempotency_key=row["idempotency_key"],
        lease_token=row["lease_token"],
        lease_expires_at=_utc(row["lease_expires_at"]),
        leased_by=row["leased_by"],
        cancel_requested=row["cancel_requested"],
        result=row["result"],
        errors=tuple(error_info(stored) for stored in row["errors"]),
        finished_at=_utc(row["finished_at"]),
        reason=row["reason"],
        workflow_id=row["workflow_id"],
        depends_on=tuple(row["depends_on"]),
        retry=policy_from_text(row["retry"]),
        headers=payload_headers(row["headers"]),
        tags=payload_tags(row["tags"]),
        meta=payload_meta(row["meta"]),
        progress=None
        if row["progress"] is None
        else Progress(row["progress"], row["progress_message"]),
        flow=None if row["flow"] is None else flow_from_text(row["flow"]),
        key_scope=scope_from_text(row["key_scope"]),
    )


def workflow_record(row: Mapping[str, Any]) -> WorkflowRecord:
    """A :class:`WorkflowRecord` from a row of the ``workflows`` table."""
    return WorkflowRecord(
        id=row["id"],
        state=WorkflowState(row["state"]),
        steps=tuple(row["steps"]),
        result=row["result"],
        created_at=row["created_at"].astimezone(UTC),
        finished_at=_utc(row["finished_at"]),
        name=row["name"],
        idempotency_key=row["idempotency_key"],
        on_failure=row["on_failure"],
    )
