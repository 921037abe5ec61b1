"""How the SQLite driver stores values: exact timestamps, JSON text, rows back to records.

Timestamps are integers counting microseconds since the Unix epoch, in UTC:
they sort and compare in SQL like the datetimes they stand for, and come back
exact to the microsecond.  JSON values (args, kwargs, results, errors, workflow
references) are stored as compact JSON text.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from taskharbor.spec import (
    ErrorInfo,
    ErrorReport,
    JobRecord,
    JobState,
    WorkflowRecord,
    WorkflowState,
)
from taskharbor.spec.records import JSON

from .corrupt_rows import decode_job, payload_args, payload_kwargs

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact)."""
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """Integer microseconds since the epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=micros)


def optional_datetime(micros: int | None) -> datetime | None:
    return None if micros is None else from_micros(micros)


def dump_json(value: JSON) -> str:
    """Compact JSON text; values were validated by the request records already."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def load_json(text: str) -> Any:
    return json.loads(text)


def error_entry(attempt: int, at: datetime, report: ErrorReport) -> dict[str, JSON]:
    """One :class:`ErrorInfo` as the JSON object kept in a job's ``errors`` list."""
    return {
        "attempt": attempt,
        "at": to_micros(at),
        "type": report.type,
        "message": report.message,
        "traceback": report.traceback,
    }


def _load_tuple(text: str) -> tuple[Any, ...]:
    """A JSON list as a tuple; the common empty list without parsing."""
    return () if text == "[]" else tuple(load_json(text))


def _error_info(entry: dict[str, Any]) -> ErrorInfo:
    return ErrorInfo(
        attempt=entry["attempt"],
        at=from_micros(entry["at"]),
        type=entry["type"],
        message=entry["message"],
        traceback=entry["traceback"],
    )


def job_record(row: sqlite3.Row) -> JobRecord:
    """A row of the ``jobs`` table as the record every driver returns.

    Raises :class:`CorruptJob` naming the job if the row was edited into
    something this driver never writes.
    """
    return decode_job(row, _job_record)


def _job_record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        task=row["task"],
        queue=row["queue"],
        state=JobState(row["state"]),
        args=() if row["args"] == "[]" else payload_args(load_json(row["args"])),
        kwargs=payload_kwargs(load_json(row["kwargs"])),
        priority=row["priority"],
        run_at=from_micros(row["run_at"]),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        created_at=from_micros(row["created_at"]),
        idempotency_key=row["idempotency_key"],
        lease_token=row["lease_token"],
        lease_expires_at=optional_datetime(row["lease_expires_at"]),
        leased_by=row["leased_by"],
        cancel_requested=bool(row["cancel_requested"]),
        result=None if row["result"] == "null" else load_json(row["result"]),
        errors=tuple(_error_info(entry) for entry in _load_tuple(row["errors"])),
        finished_at=optional_datetime(row["finished_at"]),
        reason=row["reason"],
        workflow_id=row["workflow_id"],
        depends_on=_load_tuple(row["depends_on"]),
    )


def workflow_record(row: sqlite3.Row, steps: tuple[int, ...]) -> WorkflowRecord:
    """A row of the ``workflows`` table, with its steps' job ids, as a record."""
    return WorkflowRecord(
        id=row["id"],
        state=WorkflowState(row["state"]),
        steps=steps,
        result=load_json(row["result"]),
        created_at=from_micros(row["created_at"]),
        finished_at=optional_datetime(row["finished_at"]),
        name=row["name"],
    )
