"""Retry policies as data: how long a job waits after a failed attempt.

A job carries its :class:`RetryPolicy`, stored with it at enqueue, because two
parties must agree on the wait: the worker that reports a failure (``fail``
with ``retry_at``) and the store that rescues a job whose lease expired
(``lease_expired``: a failed attempt too, whose worker is gone).  Both compute
it with :func:`retry_delay`, a pure function of the policy, the job id and the
attempt, so a failure and a rescue of the same attempt wait exactly as long,
in every driver, to the microsecond.  Jitter is drawn from a hash of the job id
and the attempt, not from a random generator: the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import lru_cache

from .errors import InvalidRequest
from .limits import MAX_DURATION_SECONDS, check_seconds

RETRY_KINDS = ("exponential", "constant", "linear")
"""The shapes a :class:`RetryPolicy` can have."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait after failed attempt ``n`` (1 for the first), before jitter:

    * ``exponential``: ``base * factor ** (n - 1)``;
    * ``constant``: ``base``;
    * ``linear``: ``base * n``;

    at most ``cap`` seconds.  With ``jitter`` the wait is that value times a
    fraction in [0, 1) drawn from the job id and the attempt ("full jitter",
    so jobs that failed together do not all come back at the same instant).
    """

    kind: str = "exponential"
    base: float = 1.0
    cap: float = 300.0
    factor: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.kind not in RETRY_KINDS:
            raise InvalidRequest(
                f"retry policy kind must be one of {', '.join(RETRY_KINDS)}, not {self.kind!r}"
            )
        object.__setattr__(self, "base", check_seconds(self.base, "retry policy base"))
        object.__setattr__(self, "cap", check_seconds(self.cap, "retry policy cap"))
        factor = self.factor
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            raise InvalidRequest(f"retry policy factor must be a number, not {factor!r}")
        if not math.isfinite(factor) or factor < 1:
            raise InvalidRequest(f"retry policy factor must be finite and >= 1, not {factor}")
        object.__setattr__(self, "factor", float(factor))
        if not isinstance(self.jitter, bool):
            raise InvalidRequest(f"retry policy jitter must be a bool, not {self.jitter!r}")


DEFAULT_RETRY = RetryPolicy()
"""The policy of a job enqueued without one (and of jobs stored before policies were):
exponential from 1 s, doubling, capped at 300 s, with jitter."""


def retry_delay(policy: RetryPolicy, job_id: int, attempt: int) -> timedelta:
    """The wait after failed attempt ``attempt`` (>= 1) of job ``job_id``, exact to the
    microsecond (rounded down), never more than ``policy.cap``."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise InvalidRequest(f"attempt must be an int >= 1, not {attempt!r}")
    seconds = min(policy.cap, _raw_seconds(policy, attempt))
    if policy.jitter:
        seconds *= _fraction(job_id, attempt)
    return timedelta(microseconds=math.floor(seconds * 1_000_000))


def _raw_seconds(policy: RetryPolicy, attempt: int) -> float:
    if policy.kind == "constant":
        return policy.base
    if policy.kind == "linear":
        return min(MAX_DURATION_SECONDS, policy.base * attempt)
    if policy.base == 0 or policy.factor == 1:
        return policy.base
    # past the longest duration the power would only overflow: stop there
    if (attempt - 1) * math.log(policy.factor) >= math.log(MAX_DURATION_SECONDS / policy.base):
        return float(MAX_DURATION_SECONDS)
    return policy.base * policy.factor ** (attempt - 1)


def _fraction(job_id: int, attempt: int) -> float:
    """A fraction in [0, 1), the same for the same job and attempt everywhere."""
    digest = hashlib.blake2b(f"{job_id}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def policy_text(policy: RetryPolicy) -> str:
    """The policy as compact JSON text, for stores that keep it as one column."""
    return _policy_text(policy)


@lru_cache(maxsize=256)
def _policy_text(policy: RetryPolicy) -> str:
    return json.dumps(asdict(policy), separators=(",", ":"), sort_keys=True)


@lru_cache(maxsize=256)
def policy_from_text(text: str) -> RetryPolicy:
    """The policy :func:`policy_text` wrote (cached: an application has few policies).

    Raises ``ValueError`` (``InvalidRequest``) for text it did not write."""
    try:
        fields = json.loads(text)
        return RetryPolicy(**fields)
    except (TypeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"not a stored retry policy: {text!r} ({exc})") from None


DEFAULT_RETRY_TEXT = policy_text(DEFAULT_RETRY)
""":data:`DEFAULT_RETRY` as stored text: the column default of existing rows."""


__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_RETRY_TEXT",
    "RETRY_KINDS",
    "RetryPolicy",
    "policy_from_text",
    "policy_text",
    "retry_delay",
]
