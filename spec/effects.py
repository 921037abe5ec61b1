"""The field effects of each job event, as data beside the transition table.

:data:`taskharbor.spec.table.JOB` says where an event takes a job; this module
says what it does to the job's other fields, so that a driver can compile the
effects (as it compiles guards into a ``CASE``) instead of hand-coding the
prose of :mod:`taskharbor.spec.spi`, and so that a test can check any driver
against them (:func:`effect_violations`; the conformance suite does, event by
event).

Effects come from two places, both data:

* :data:`STATE_EFFECTS`: what every event that enters or leaves a state does
  (entering a finished state sets ``finished_at``; leaving ``running`` clears
  the lease fields, ``cancel_requested`` and a recorded ``reason``; entering
  ``cancelled`` sets a ``reason``).
* :data:`EVENT_EFFECTS`: what one event does besides, some only when it leads
  to given target states (``fail`` sets ``run_at`` only into ``retrying``).

An event's own effect on a field wins over a state effect on it.  Every field
that neither names is left as it was (:data:`Effect.KEEP`): that is part of
the contract too.  ``enqueue`` creates the job and is not listed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from .records import JobRecord
from .retry import retry_delay
from .table import FINISHED_JOB_STATES, JobEvent, JobState


class Effect(enum.StrEnum):
    """What an event does to one field."""

    KEEP = "keep"
    """Left as it was."""
    NOW = "now"
    """The call's now."""
    CLEAR = "clear"
    """``None`` (``False`` for ``cancel_requested``)."""
    ZERO = "zero"
    """``0``."""
    INCREMENT = "+1"
    DECREMENT = "-1"
    NOW_PLUS_LEASE = "now + lease_seconds"
    """The call's now plus the lease duration the call was given."""
    NOW_PLUS_RETRY_DELAY = "now + retry_delay(retry, id, attempt)"
    """The call's now plus the job's retry policy's delay for its attempt
    (:func:`taskharbor.spec.retry.retry_delay`)."""
    NEW_TOKEN = "new token"
    """A fresh, non-empty lease token, unlike the one before."""
    SET = "set"
    """Some value that is not ``None``: which one is said by the rules of the event
    (a cancellation reason)."""
    GIVEN = "given"
    """A value the call carries (a result, a worker id, a snooze time, ``retry_at``
    or else now); a checker compares it only when told the value."""
    APPEND_ERROR = "append error"
    """One :class:`~taskharbor.spec.records.ErrorInfo` appended, for the attempt
    the job was in, at the call's now."""


@dataclass(frozen=True, slots=True)
class FieldEffect:
    """``effect`` on ``field``; only for the targets in ``when`` when it is given."""

    field: str
    effect: Effect
    when: frozenset[JobState] | None = None

    def applies_to(self, target: JobState) -> bool:
        return self.when is None or target in self.when


def _on(*states: JobState) -> frozenset[JobState]:
    return frozenset(states)


LEASE_FIELDS = ("lease_token", "lease_expires_at", "leased_by")
"""Set exactly while a job is ``running``."""

_LEFT_RUNNING = (
    *(FieldEffect(name, Effect.CLEAR) for name in LEASE_FIELDS),
    FieldEffect("cancel_requested", Effect.CLEAR),
    FieldEffect("reason", Effect.CLEAR),
)


@dataclass(frozen=True, slots=True)
class StateEffects:
    """The effects shared by every event that enters or leaves states."""

    entering_finished: tuple[FieldEffect, ...] = (FieldEffect("finished_at", Effect.NOW),)
    """Entering ``succeeded``, ``dead`` or ``cancelled`` (from a state that is not finished)."""
    leaving_running: tuple[FieldEffect, ...] = _LEFT_RUNNING
    """Leaving ``running`` for any other state (a ``reason`` entering ``cancelled`` wins)."""
    entering_cancelled: tuple[FieldEffect, ...] = (FieldEffect("reason", Effect.SET),)
    """Entering ``cancelled``: the reason the rules give (kept if one was recorded)."""


STATE_EFFECTS = StateEffects()

_RETRYING, _SCHEDULED, _AVAILABLE = JobState.RETRYING, JobState.SCHEDULED, JobState.AVAILABLE

EVENT_EFFECTS: Mapping[JobEvent, tuple[FieldEffect, ...]] = MappingProxyType(
    {
        JobEvent.RELEASE: (
            FieldEffect("args", Effect.GIVEN),  # the step's input, then its own args
            FieldEffect("run_at", Effect.NOW, when=_on(_AVAILABLE)),  # kept when in the future
        ),
        JobEvent.PROMOTE: (),
        JobEvent.LEASE: (
            FieldEffect("attempt", Effect.INCREMENT),
            FieldEffect("lease_token", Effect.NEW_TOKEN),
            FieldEffect("leased_by", Effect.GIVEN),
            FieldEffect("lease_expires_at", Effect.NOW_PLUS_LEASE),
            FieldEffect("progress", Effect.CLEAR),  # a new attempt reports its own
        ),
        JobEvent.HEARTBEAT: (
            FieldEffect("lease_expires_at", Effect.NOW_PLUS_LEASE),
            FieldEffect("progress", Effect.GIVEN),  # the lease's, when it carries one
        ),
        JobEvent.SUCCEED: (FieldEffect("result", Effect.GIVEN),),
        JobEvent.FAIL: (
            FieldEffect("errors", Effect.APPEND_ERROR),
            FieldEffect("run_at", Effect.GIVEN, when=_on(_RETRYING)),  # retry_at, or now
        ),
        JobEvent.SNOOZE: (
            FieldEffect("attempt", Effect.DECREMENT),
            FieldEffect("run_at", Effect.GIVEN, when=_on(_SCHEDULED)),
        ),
        JobEvent.LEASE_EXPIRED: (
            FieldEffect("errors", Effect.APPEND_ERROR),
            FieldEffect("run_at", Effect.NOW_PLUS_RETRY_DELAY, when=_on(_RETRYING)),
        ),
        JobEvent.CANCEL: (),
        JobEvent.REQUEUE: (
            FieldEffect("attempt", Effect.ZERO),
            FieldEffect("run_at", Effect.NOW),
            FieldEffect("cancel_requested", Effect.CLEAR),
            FieldEffect("finished_at", Effect.CLEAR),
            FieldEffect("reason", Effect.CLEAR),
            FieldEffect("result", Effect.CLEAR),
            FieldEffect("args", Effect.GIVEN),  # a step's own args, its input first if available
        ),
    }
)
"""Each event's own effects on a stored job (every event but ``enqueue``)."""


def field_effects(event: JobEvent, source: JobState, target: JobState) -> dict[str, Effect]:
    """The effect of ``event`` from ``source`` to ``target`` on every field of a job
    but ``id`` and ``state``: the state effects, then the event's own over them,
    and :data:`Effect.KEEP` for the rest."""
    effects = {f.name: Effect.KEEP for f in fields(JobRecord) if f.name not in ("id", "state")}
    shared: list[FieldEffect] = []
    if source == JobState.RUNNING and target != JobState.RUNNING:
        shared += STATE_EFFECTS.leaving_running
    if target in FINISHED_JOB_STATES and source not in FINISHED_JOB_STATES:
        shared += STATE_EFFECTS.entering_finished
    if target == JobState.CANCELLED:
        shared += STATE_EFFECTS.entering_cancelled
    for effect in (*shared, *EVENT_EFFECTS[event]):
        if effect.applies_to(target):
            effects[effect.field] = effect.effect
    return effects


def effect_violations(
    event: JobEvent,
    before: JobRecord,
    after: JobRecord,
    now: datetime,
    *,
    lease_seconds: float | None = None,
    given: Mapping[str, Any] | None = None,
) -> list[str]:
    """How ``after`` breaks the field effects of ``event`` applied to ``before`` at
    ``now``; empty when it does not.  ``lease_seconds`` is the call's lease
    duration (for :data:`Effect.NOW_PLUS_LEASE`); ``given`` the values of
    :data:`Effect.GIVEN` fields to compare (the others are not compared)."""
    given = given or {}
    problems = []
    for name, effect in field_effects(event, before.state, after.state).items():
        new = getattr(after, name)
        expected = _expected(effect, before, name, now, lease_seconds, given.get(name, _ANY))
        if expected is _ANY:
            continue
        ok = expected.holds(new) if isinstance(expected, _Check) else new == expected
        if not ok:
            problems.append(
                f"{event} {before.state}->{after.state}: {name} is {new!r} "
                f"(was {getattr(before, name)!r}), expected {effect}"
            )
    return problems


@dataclass(frozen=True, slots=True)
class _Check:
    """An expectation that is a property of the new value rather than a value."""

    holds: Callable[[Any], bool]


_ANY: Any = object()
"""No expectation: a given value the caller did not say."""


def _expected(
    effect: Effect,
    before: JobRecord,
    name: str,
    now: datetime,
    lease_seconds: float | None,
    given: Any,
) -> Any:
    """The value (or a :class:`_Check`) that ``effect`` gives field ``name`` of ``before``."""
    old = getattr(before, name)
    simple = {
        Effect.KEEP: old,
        Effect.NOW: now,
        Effect.CLEAR: False if isinstance(old, bool) else None,
        Effect.ZERO: 0,
        Effect.GIVEN: given,
    }
    if effect in simple:
        return simple[effect]
    if effect is Effect.INCREMENT:
        return old + 1
    if effect is Effect.DECREMENT:
        return old - 1
    if effect is Effect.NOW_PLUS_RETRY_DELAY:
        return now + retry_delay(before.retry, before.id, before.attempt)
    if effect is Effect.NOW_PLUS_LEASE:
        return _ANY if lease_seconds is None else now + timedelta(seconds=lease_seconds)
    if effect is Effect.NEW_TOKEN:
        return _Check(lambda new: isinstance(new, str) and new != "" and new != old)
    if effect is Effect.SET:
        return _Check(lambda new: new is not None)
    assert effect is Effect.APPEND_ERROR, effect
    return _Check(
        lambda new: (
            len(new) == len(old) + 1
            and tuple(new[:-1]) == tuple(old)
            and (new[-1].attempt, new[-1].at) == (before.attempt, now)
        )
    )
