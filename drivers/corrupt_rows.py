"""Job rows that cannot be decoded: an error naming the job, and no stuck batch.

A row edited by hand (a payload that is not JSON, a state no version of
TaskHarbor writes) must neither crash a reader with a bare decoding error nor
stop a worker from serving the other jobs.  Reading such a row raises
:class:`CorruptJob`, which names the job and the problem.  A worker never
receives it: the driver that leased it sends it to the dead-letter queue at
once, with the problem as its error, and hands out the rest of the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from taskharbor.spec import (
    CORRUPT_JOB_TYPE,
    DEFAULT_RETRY,
    CorruptJob,
    ErrorReport,
    Failure,
    InvalidRequest,
    JobRecord,
    Progress,
    RetryPolicy,
)
from taskharbor.spec.retry import policy_from_text

logger = logging.getLogger("taskharbor")


class RowLike(Protocol):
    """A database row read by column name (a ``sqlite3.Row`` or a psycopg dict row)."""

    def __getitem__(self, column: str, /) -> Any: ...


Row = TypeVar("Row", bound=RowLike)


def decode_job(row: Row, decode: Callable[[Row], JobRecord]) -> JobRecord:
    """``decode(row)``, or :class:`CorruptJob` naming the row's job and what is wrong."""
    try:
        return decode(row)
    except (ValueError, TypeError, KeyError) as exc:  # bad JSON, unknown state, wrong shape
        raise CorruptJob(row["id"], f"{type(exc).__name__}: {exc}") from exc


def payload_args(value: Any) -> tuple[Any, ...]:
    """Stored ``args`` as a tuple: a JSON list, or ``TypeError`` (a shape no driver writes)."""
    if not isinstance(value, list):
        raise TypeError(f"args must be a JSON list, not {type(value).__name__}")
    return tuple(value)


def payload_kwargs(value: Any) -> dict[str, Any]:
    """Stored ``kwargs``: a JSON object, or ``TypeError`` (a shape no driver writes)."""
    if not isinstance(value, dict):
        raise TypeError(f"kwargs must be a JSON object, not {type(value).__name__}")
    return value


def payload_headers(value: Any) -> dict[str, str]:
    """Stored ``headers``: a JSON object of strings, or ``TypeError`` (a shape no driver
    writes)."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise TypeError(f"headers must be a JSON object of strings, not {value!r}")
    return value


def payload_tags(value: Any) -> tuple[str, ...]:
    """Stored ``tags``: a JSON array of strings, or ``TypeError``."""
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise TypeError(f"tags must be a JSON array of strings, not {value!r}")
    return tuple(value)


def payload_meta(value: Any) -> dict[str, Any]:
    """Stored ``meta``: a JSON object, or ``TypeError``."""
    if not isinstance(value, dict):
        raise TypeError(f"meta must be a JSON object, not {value!r}")
    return value


def progress_to_json(progress: Progress) -> list[Any]:
    """A progress as stored by the stores that keep it as JSON: ``[value, message]``."""
    return [progress.value, progress.message]


def progress_from_json(value: Any) -> Progress:
    """Stored ``progress`` (``[value, message]``), or ``TypeError``."""
    if not isinstance(value, list) or len(value) != 2:
        raise TypeError(f"progress must be a JSON array [value, message], not {value!r}")
    return Progress(value[0], value[1])


def split_leased(
    rows: Iterable[Row], decode: Callable[[Row], JobRecord]
) -> tuple[list[JobRecord], list[Failure]]:
    """The leased rows that decode, and a permanent failure for each one that does not.

    ``decode`` raises :class:`CorruptJob` for a row it cannot read.
    """
    records: list[JobRecord] = []
    corrupt: list[Failure] = []
    for row in rows:
        try:
            records.append(decode(row))
        except CorruptJob as exc:
            logger.error("%s; it goes to the dead-letter queue", exc)
            report = ErrorReport(CORRUPT_JOB_TYPE, str(exc))
            corrupt.append(Failure(row["id"], row["lease_token"], report, permanent=True))
    return records, corrupt


def rescue_policy(job_id: int, text: object) -> RetryPolicy:
    """A rescued job's stored retry policy; the default one if it cannot be read, so that
    a corrupt row never wedges ``rescue`` (reading the job still raises :class:`CorruptJob`)."""
    try:
        return policy_from_text(str(text))
    except InvalidRequest as exc:
        logger.error("job %s: %s; its rescue waits by the default policy", job_id, exc)
        return DEFAULT_RETRY
