"""How the SQLite driver stores values: exact timestamps, JSON text, rows back to records.

Timestamps are integers counting microseconds since the Unix epoch, in UTC:
they sort and compare in SQL like the datetimes they stand for, and come back
exact to the microsecond.  JSON values (args, kwargs, results, errors, workflow
references) are stored as compact JSON text.

Every statement that reads job rows names :data:`JOB_COLUMNS`, in that order,
so that :func:`job_record` can unpack a row by position: reading 25 columns of
a ``sqlite3.Row`` by name cost more than the rest of the decoding.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from taskharbor.spec import (
    ErrorInfo,
    ErrorReport,
    JobRecord,
    JobState,
    WorkflowRecord,
    WorkflowState,
)
from taskharbor.spec.flow import flow_from_text
from taskharbor.spec.keys import UNTIL_PRUNED, scope_from_text
from taskharbor.spec.records import JSON
from taskharbor.spec.retry import policy_from_text

from ..corrupt_rows import (
    decode_job,
    payload_args,
    payload_headers,
    payload_kwargs,
    payload_meta,
    payload_tags,
    progress_from_json,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_STATES = {state.value: state for state in JobState}
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

JOB_COLUMNS = (
    "id, task, queue, state, args, kwargs, priority, run_at, attempt, max_attempts, "
    "created_at, COALESCE(idempotency_key, given_up_key), lease_token, lease_expires_at, "
    "leased_by, cancel_requested, "
    "result, errors, finished_at, reason, workflow_id, depends_on, step_args, step_input, retry, "
    "flow, "
    "headers, tags, meta, progress, key_scope"
)
"""The ``jobs`` columns every job-reading statement selects, in the order :func:`job_record`
unpacks them (a job's key is in ``given_up_key`` once it gave the key up)."""


def to_micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact)."""
    return (moment - _EPOCH) // _MICROSECOND


@lru_cache(maxsize=4096)
def from_micros(micros: int) -> datetime:
    """Integer microseconds since the epoch as an aware UTC datetime.

    Cached: the jobs of a batch share their ``created_at`` and ``run_at``
    (the "now" of the call that wrote them), and datetimes are immutable.
    """
    return _EPOCH + timedelta(microseconds=micros)


def optional_datetime(micros: int | None) -> datetime | None:
    return None if micros is None else from_micros(micros)


def dump_json(value: JSON) -> str:
    """Compact JSON text; values were validated by the request records already."""
    return "null" if value is None else _ENCODER.encode(value)


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
    (
        job_id,
        task,
        queue,
        state,
        args,
        kwargs,
        priority,
        run_at,
        attempt,
        max_attempts,
        created_at,
        idempotency_key,
        lease_token,
        lease_expires_at,
        leased_by,
        cancel_requested,
        result,
        errors,
        finished_at,
        reason,
        workflow_id,
        depends_on,
        _step_args,
        _step_input,
        retry,
        flow,
        headers,
        tags,
        meta,
        progress,
        key_scope,
    ) = row
    return JobRecord(
        id=job_id,
        task=task,
        queue=queue,
        state=_job_state(state),
        args=() if args == "[]" else payload_args(load_json(args)),
        kwargs={} if kwargs == "{}" else payload_kwargs(load_json(kwargs)),
        priority=priority,
        run_at=from_micros(run_at),
        attempt=attempt,
        max_attempts=max_attempts,
        created_at=from_micros(created_at),
        idempotency_key=idempotency_key,
        lease_token=lease_token,
        lease_expires_at=optional_datetime(lease_expires_at),
        leased_by=leased_by,
        cancel_requested=bool(cancel_requested),
        result=None if result == "null" else load_json(result),
        errors=tuple(_error_info(entry) for entry in _load_tuple(errors)),
        finished_at=optional_datetime(finished_at),
        reason=reason,
        workflow_id=workflow_id,
        depends_on=_load_tuple(depends_on),
        retry=policy_from_text(retry),
        flow=None if flow is None else flow_from_text(flow),
        headers={} if headers == "{}" else payload_headers(load_json(headers)),
        tags=() if tags == "[]" else payload_tags(load_json(tags)),
        meta={} if meta == "{}" else payload_meta(load_json(meta)),
        progress=None if progress is None else progress_from_json(load_json(progress)),
        key_scope=UNTIL_PRUNED if key_scope is None else scope_from_text(key_scope),
    )


def _job_state(value: str) -> JobState:
    """The stored state; one no version writes raises :class:`JobState`'s own ``ValueError``."""
    state = _STATES.get(value)
    return JobState(value) if state is None else state


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
        idempotency_key=row["idempotency_key"],
        on_failure=row["on_failure"],
    )
