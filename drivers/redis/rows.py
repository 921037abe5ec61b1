"""Encoding values for the store's hashes, and decoding jobs and workflows from them.

Times are kept as 18-digit strings of microseconds since 0001-01-01 UTC: exact
for every instant the spec allows, ordered as strings, and never a Lua double.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from taskharbor.drivers.corrupt_rows import (
    payload_args,
    payload_headers,
    payload_kwargs,
    payload_meta,
    progress_from_json,
)
from taskharbor.spec import CorruptJob
from taskharbor.spec.flow import FlowLimits, flow_from_text, flow_text, rate_bucket
from taskharbor.spec.keys import scope_from_text, scope_text
from taskharbor.spec.records import (
    JSON,
    EnqueueRequest,
    ErrorInfo,
    JobRecord,
    ResultRef,
    WorkflowRecord,
)
from taskharbor.spec.retry import policy_from_text, policy_text
from taskharbor.spec.table import JobState, WorkflowState

EPOCH = datetime(1, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_time(moment: datetime) -> str:
    """An aware instant as the store keeps it."""
    return f"{(moment - EPOCH) // _MICROSECOND:018d}"


def decode_time(text: str) -> datetime:
    return EPOCH + timedelta(microseconds=int(text))


def micros(seconds: float) -> int:
    """A duration in whole microseconds, rounded as ``timedelta`` rounds it."""
    return timedelta(seconds=seconds) // _MICROSECOND


def encode_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


FLOW_FIELDS = (
    "flow",
    "flow_key",
    "flow_concurrency",
    "flow_key_concurrency",
    "flow_sequence",
    "flow_rate",
    "flow_window",
    "flow_bucket",
)
"""A job's flow fields (:mod:`.flow`), in the order :func:`flow_fields` gives them."""


def flow_fields(limits: FlowLimits | None, task: str) -> list[str]:
    """The script arguments of a new job's limits (empty strings: no such limit)."""
    if limits is None:
        return [""] * len(FLOW_FIELDS)
    rate = limits.rate
    return [
        flow_text(limits),
        limits.key or "",
        _count(limits.concurrency),
        _count(limits.key_concurrency),
        "" if limits.sequence is None else limits.sequence.value,
        "" if rate is None else str(rate.starts),
        "" if rate is None else str(micros(rate.window)),
        rate_bucket(task, limits) or "",
    ]


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


REQUEST_FIELDS = 14 + len(FLOW_FIELDS)
"""How many script arguments :func:`request_fields` gives per job."""


def request_fields(request: EnqueueRequest) -> list[str]:
    """The script arguments of one new job (``REQUEST_FIELDS`` of the library): its
    fields, its tags and meta, its key scope, then its flow fields."""
    run_at = request.run_at
    return [
        request.task,
        request.queue,
        encode_json(list(request.args)),
        encode_json(dict(request.kwargs)),
        str(request.priority),
        "" if run_at is None else encode_time(run_at),
        str(request.max_attempts),
        request.idempotency_key or "",
        policy_text(request.retry),
        encode_json(dict(request.headers)) if request.headers else "",
        TAG_SEPARATOR.join(request.tags),
        encode_json(dict(request.meta)) if request.meta else "",
        scope_text(request.key_scope) or "",
        "" if request.key_scope.seconds is None else str(micros(request.key_scope.seconds)),
        *flow_fields(request.flow, request.task),
    ]


TAG_SEPARATOR = "\x00"
"""Between a job's tags in its ``tags`` field (no tag holds a NUL), so the script splits
them without a JSON parser."""


def ref_template(ref: ResultRef) -> str:
    """A result reference as text with each step index written ``#i#`` (the script
    swaps in job ids, then results)."""
    if isinstance(ref, int):
        return f"#{ref}#"
    return "[" + ",".join(ref_template(item) for item in ref) + "]"


_REF = re.compile(r"#(\d+)#")


def ref_from_template(text: str) -> ResultRef:
    value: ResultRef = json.loads(_REF.sub(r"\1", text))
    return value


def as_dict(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def decode_job(fields: dict[str, Any]) -> JobRecord:
    """The job a hash holds; :class:`CorruptJob` naming it when it cannot be read."""
    try:
        return _decode(fields)
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptJob(int(fields.get("id", 0)), f"{type(exc).__name__}: {exc}") from exc


def _optional_time(fields: dict[str, Any], name: str) -> datetime | None:
    text = fields.get(name)
    return None if text is None else decode_time(text)


def _result(fields: dict[str, Any]) -> JSON:
    text = fields.get("result")
    return None if text is None else json.loads(text)


def _decode(f: dict[str, Any]) -> JobRecord:
    depends = f.get("depends_on")
    workflow = f.get("workflow_id")
    return JobRecord(
        id=int(f["id"]),
        task=f["task"],
        queue=f["queue"],
        state=JobState(f["state"]),
        args=payload_args(json.loads(f["args"])),
        kwargs=payload_kwargs(json.loads(f["kwargs"])),
        priority=int(f["priority"]),
        run_at=decode_time(f["run_at"]),
        attempt=int(f["attempt"]),
        max_attempts=int(f["max_attempts"]),
        created_at=decode_time(f["created_at"]),
        idempotency_key=f.get("idempotency_key"),
        lease_token=f.get("lease_token"),
        lease_expires_at=_optional_time(f, "lease_expires_at"),
        leased_by=f.get("leased_by"),
        cancel_requested=f.get("cancel_requested") == "1",
        result=_result(f),
        errors=tuple(
            ErrorInfo(e["attempt"], decode_time(e["at"]), e["type"], e["message"], e["traceback"])
            for e in json.loads(f["errors"])
        ),
        finished_at=_optional_time(f, "finished_at"),
        reason=f.get("reason"),
        workflow_id=None if workflow is None else int(workflow),
        depends_on=tuple(int(x) for x in depends.split(",")) if depends else (),
        retry=policy_from_text(f["retry"]),
        headers=payload_headers(json.loads(f["headers"])) if "headers" in f else {},
        flow=flow_from_text(f["flow"]) if "flow" in f else None,
        tags=tuple(f["tags"].split(TAG_SEPARATOR)) if "tags" in f else (),
        meta=payload_meta(json.loads(f["meta"])) if "meta" in f else {},
        progress=progress_from_json(json.loads(f["progress"])) if "progress" in f else None,
        key_scope=scope_from_text(f.get("key_scope")),
    )


def decode_workflow(f: dict[str, str]) -> WorkflowRecord:
    return WorkflowRecord(
        id=int(f["id"]),
        state=WorkflowState(f["state"]),
        steps=tuple(int(x) for x in f["steps"].split(",")),
        result=ref_from_template(f["result"]),
        created_at=decode_time(f["created_at"]),
        finished_at=_optional_time(f, "finished_at"),
        name=f.get("name"),
        on_failure=int(f["on_failure"]) if "on_failure" in f else None,
        idempotency_key=f.get("idempotency_key"),
    )
