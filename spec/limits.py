"""The range of instants and durations the contract accepts.

Python's calendar ends at years 1 and 9999, and a store may give an instant
back in another time zone; an instant or a sum ``now + duration`` past those
ends raises ``OverflowError`` deep inside a driver.  These checks refuse such
values where they are given, with an ``InvalidRequest`` naming them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from .errors import InvalidRequest

EARLIEST_INSTANT = datetime(1, 1, 3, tzinfo=UTC)
LATEST_INSTANT = datetime(9999, 12, 29, tzinfo=UTC)
"""The instants the contract accepts (``run_at``, ``retry_at``, a filter's or prune's
bound): two days inside Python's calendar at each end, so every store can keep
them and give them back in UTC or in any session time zone."""

MAX_DURATION_SECONDS = 100 * 365 * 86400
"""The longest duration the contract accepts (a lease, a delay, a backoff): 100
years, so that now plus any of them is a date every store can keep."""


def check_aware(value: object, what: str) -> None:
    """A datetime with a timezone, between :data:`EARLIEST_INSTANT` and
    :data:`LATEST_INSTANT` (one that would overflow in UTC is refused here, by name,
    rather than raising ``OverflowError`` inside a driver)."""
    if not isinstance(value, datetime):
        raise InvalidRequest(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest(f"{what} must be timezone-aware, not naive ({value.isoformat()})")
    if not EARLIEST_INSTANT <= value <= LATEST_INSTANT:
        raise InvalidRequest(
            f"{what} {value.isoformat()} is out of range: give an instant between "
            f"{EARLIEST_INSTANT.isoformat()} and {LATEST_INSTANT.isoformat()}"
        )


def check_seconds(value: object, what: str, *, positive: bool = False) -> float:
    """A duration: a finite number of seconds, >= 0 (> 0 if ``positive``), at most
    :data:`MAX_DURATION_SECONDS`; named in the error when it is not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{what} must be a number of seconds, not {value!r}")
    low = "positive" if positive else ">= 0"
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise InvalidRequest(f"{what} must be {low} and finite, not {value}")
    if value > MAX_DURATION_SECONDS:
        raise InvalidRequest(
            f"{what} of {value} s is too long: at most {MAX_DURATION_SECONDS} s (100 years)"
        )
    return float(value)
