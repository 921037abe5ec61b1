"""Retry delays: how long a failed job waits before its next attempt.

A :class:`Backoff` only says *when*; whether a job retries at all is the
contract's decision (the driver's ``fail`` guards: ``permanent``,
``attempts_exhausted``), so a policy never needs to know ``max_attempts``.

The built-in shapes (:meth:`Backoff.exponential`, :meth:`Backoff.constant`,
:meth:`Backoff.linear`) are plain data, a :class:`~taskharbor.spec.RetryPolicy`
stored with every job at enqueue: a job whose worker died (its lease expired)
is rescued by the store, which waits by that stored policy, and the worker's
own retries use the same :func:`~taskharbor.spec.retry_delay`, so a failure
and a rescue of one attempt wait exactly as long.  A :meth:`Backoff.custom`
formula runs only in the worker; the store cannot run it, so a rescued job of
such a task waits by the default policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from taskharbor.spec import DEFAULT_RETRY, InvalidRequest, RetryPolicy, retry_delay
from taskharbor.spec.limits import MAX_DURATION_SECONDS, check_seconds


class Backoff:
    """A retry policy: ``delay(attempt)`` gives the seconds to wait after a failed attempt.

    ``attempt`` is the number of the attempt that just failed (1 for the first).
    Build one with :meth:`exponential` (the default policy), :meth:`constant`,
    :meth:`linear`, or :meth:`custom` from any callable ``attempt -> seconds``.
    A plain callable given as a task's ``backoff=`` is wrapped with :meth:`custom`.
    ``policy`` is what is stored with each job (for a custom formula: the
    default policy, by which a rescue waits).
    """

    __slots__ = ("_formula", "policy")

    def __init__(self, policy: RetryPolicy, formula: Callable[[int], float] | None = None) -> None:
        self.policy = policy
        self._formula = formula

    def __repr__(self) -> str:
        if self._formula is not None:
            name = getattr(self._formula, "__qualname__", repr(self._formula))
            return f"Backoff.custom({name})"
        p = self.policy
        if p.kind == "exponential":
            return (
                f"Backoff.exponential(base={p.base}, cap={p.cap}, jitter={p.jitter}"
                + ("" if p.factor == 2 else f", factor={p.factor}")
                + ")"
            )
        if p.kind == "constant":
            return f"Backoff.constant({p.base})"
        return f"Backoff.linear(step={p.base}, cap={p.cap})"

    @property
    def custom_formula(self) -> bool:
        """Whether the delays come from a formula (run by the worker only)."""
        return self._formula is not None

    def delay(self, attempt: int, job_id: int = 0) -> float:
        """Seconds to wait before the attempt after ``attempt`` (>= 1) of job ``job_id``.

        The jitter of a policy with jitter is drawn from the job id and the
        attempt, so the same job and attempt always wait the same.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise InvalidRequest(f"attempt must be an int >= 1, not {attempt!r}")
        if self._formula is None:
            return retry_delay(self.policy, job_id, attempt).total_seconds()
        return check_seconds(self._formula(attempt), f"{self!r} delay for attempt {attempt}")

    @classmethod
    def exponential(
        cls, base: float = 1.0, cap: float = 300.0, jitter: bool = True, *, factor: float = 2.0
    ) -> Backoff:
        """``base * factor ** (attempt - 1)`` seconds (doubling by default), at most ``cap``.

        With ``jitter`` (the default) the delay is a fraction of that value,
        between 0 and all of it ("full jitter"), so jobs that failed together do
        not all retry at the same instant; the fraction is drawn from the job
        id and the attempt (the same in the worker and in the store).
        """
        return cls(
            RetryPolicy(
                "exponential",
                base=check_seconds(base, "exponential backoff base"),
                cap=check_seconds(cap, "exponential backoff cap"),
                factor=factor,
                jitter=jitter,
            )
        )

    @classmethod
    def constant(cls, seconds: float) -> Backoff:
        """The same delay after every failed attempt (0 retries at once)."""
        seconds = check_seconds(seconds, "constant backoff")
        return cls(RetryPolicy("constant", base=seconds, cap=seconds, jitter=False))

    @classmethod
    def linear(cls, step: float, cap: float = math.inf) -> Backoff:
        """``step * attempt`` seconds, at most ``cap`` (no cap: 100 years, the longest
        duration there is)."""
        step = check_seconds(step, "linear backoff step")
        if not (isinstance(cap, int | float) and not isinstance(cap, bool)) or cap < 0:
            raise InvalidRequest(f"linear backoff cap must be a number >= 0, not {cap!r}")
        cap = min(cap, MAX_DURATION_SECONDS)
        return cls(RetryPolicy("linear", base=step, cap=cap, jitter=False))

    @classmethod
    def custom(cls, formula: Callable[[int], float]) -> Backoff:
        """Any callable ``attempt -> seconds``; its result is checked at every use.

        The store cannot run it: a job rescued after its worker died waits by
        the default policy (exponential from 1 s to 300 s, with jitter).
        """
        if not callable(formula):
            raise InvalidRequest(f"a backoff must be a Backoff or a callable, not {formula!r}")
        return cls(DEFAULT_RETRY, formula)


def as_backoff(value: Backoff | Callable[[int], float] | None) -> Backoff:
    """A task's ``backoff=`` option as a policy; ``None`` is the default exponential policy."""
    if value is None:
        return Backoff(DEFAULT_RETRY)
    if isinstance(value, Backoff):
        return value
    return Backoff.custom(value)
