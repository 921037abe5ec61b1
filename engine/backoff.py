"""Retry delays: how long a failed job waits before its next attempt.

A :class:`Backoff` only says *when*; whether a job retries at all is the
contract's decision (the driver's ``fail`` guards: ``permanent``,
``attempts_exhausted``), so a policy never needs to know ``max_attempts``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from taskharbor.spec import InvalidRequest


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{what} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise InvalidRequest(f"{what} must be a finite number of seconds >= 0, not {value}")
    return float(value)


class Backoff:
    """A retry policy: ``delay(attempt)`` gives the seconds to wait after a failed attempt.

    ``attempt`` is the number of the attempt that just failed (1 for the first).
    Build one with :meth:`exponential` (the default policy), :meth:`constant`,
    :meth:`linear`, or :meth:`custom` from any callable ``attempt -> seconds``.
    A plain callable given as a task's ``backoff=`` is wrapped with :meth:`custom`.
    """

    __slots__ = ("_describe", "_formula")

    def __init__(self, formula: Callable[[int], float], describe: str) -> None:
        self._formula = formula
        self._describe = describe

    def __repr__(self) -> str:
        return f"Backoff.{self._describe}"

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the attempt after ``attempt`` (>= 1)."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise InvalidRequest(f"attempt must be an int >= 1, not {attempt!r}")
        return _seconds(self._formula(attempt), f"{self!r} delay for attempt {attempt}")

    @classmethod
    def exponential(
        cls,
        base: float = 1.0,
        cap: float = 300.0,
        jitter: bool = True,
        *,
        rng: random.Random | None = None,
    ) -> Backoff:
        """``base * 2 ** (attempt - 1)`` seconds, at most ``cap``.

        With ``jitter`` (the default) the delay is drawn uniformly between 0 and
        that value ("full jitter"), so jobs that failed together do not all
        retry at the same instant.  ``rng`` makes the draw reproducible in tests.
        """
        base = _seconds(base, "exponential backoff base")
        cap = _seconds(cap, "exponential backoff cap")
        draw = (rng or random.Random()).uniform

        def formula(attempt: int) -> float:
            # 2.0 ** 64 is past any sensible cap and keeps the float finite.
            ceiling = min(cap, base * 2.0 ** min(attempt - 1, 64))
            return draw(0.0, ceiling) if jitter else ceiling

        return cls(formula, f"exponential(base={base}, cap={cap}, jitter={jitter})")

    @classmethod
    def constant(cls, seconds: float) -> Backoff:
        """The same delay after every failed attempt (0 retries at once)."""
        seconds = _seconds(seconds, "constant backoff")
        return cls(lambda attempt: seconds, f"constant({seconds})")

    @classmethod
    def linear(cls, step: float, cap: float = math.inf) -> Backoff:
        """``step * attempt`` seconds, at most ``cap``."""
        step = _seconds(step, "linear backoff step")
        if not (isinstance(cap, int | float) and not isinstance(cap, bool)) or cap < 0:
            raise InvalidRequest(f"linear backoff cap must be a number >= 0, not {cap!r}")
        return cls(lambda attempt: min(cap, step * attempt), f"linear(step={step}, cap={cap})")

    @classmethod
    def custom(cls, formula: Callable[[int], float]) -> Backoff:
        """Any callable ``attempt -> seconds``; its result is checked at every use."""
        if not callable(formula):
            raise InvalidRequest(f"a backoff must be a Backoff or a callable, not {formula!r}")
        name = getattr(formula, "__qualname__", repr(formula))
        return cls(formula, f"custom({name})")


def as_backoff(value: Backoff | Callable[[int], float] | None) -> Backoff:
    """A task's ``backoff=`` option as a policy; ``None`` is the default exponential policy."""
    if value is None:
        return Backoff.exponential()
    if isinstance(value, Backoff):
        return value
    return Backoff.custom(value)
