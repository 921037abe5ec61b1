"""How long a job holds its idempotency key: the key's scope.

A request with an ``idempotency_key`` makes its job the key's *holder* for as
long as the request's :class:`KeyScope` says:

* :data:`UNTIL_PRUNED` (the default): while the job is stored, whatever its
  state; pruning it frees the key.
* :meth:`KeyScope.unfinished`: while the job is unfinished (pending,
  scheduled, available, running, retrying); once it succeeded, died or was
  cancelled, the next enqueue with the key stores a new job.
* :meth:`KeyScope.window`: for ``seconds`` from the job's enqueue (its
  ``created_at``), whatever its state: held while ``now < created_at +
  seconds``, free from that instant on.

An enqueue whose key is held stores nothing and answers the holder with
``created=False``.  One whose key was taken by a job that no longer holds it
stores a new job, which takes the key; the older job gives the key up for good,
so it never holds it again, even when requeued (it runs as an unkeyed job).
Only a job that took its key can hold it, so at most one stored job holds a key
at any instant, and a store finds it with one lookup by key.

The rules are the functions here (:func:`holds_key`), shared by the reference
model and every driver that evaluates them in Python.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from .errors import InvalidRequest
from .table import FINISHED_JOB_STATES, JobState

MAX_KEY_WINDOW_SECONDS = 366 * 86400
"""The longest window a key can be held for (a year and a day); a key held longer
is what the default scope, until the job is pruned, is for."""


class KeyHold(enum.StrEnum):
    """What ends a job's hold on its key."""

    PRUNED = "pruned"
    UNFINISHED = "unfinished"
    WINDOW = "window"


@dataclass(frozen=True, slots=True)
class KeyScope:
    """How long a job holds its idempotency key (see the module's docstring).

    Build one with :data:`UNTIL_PRUNED`, :meth:`unfinished` or :meth:`window`;
    ``seconds`` is the window (only with :attr:`KeyHold.WINDOW`).
    """

    hold: KeyHold = KeyHold.PRUNED
    seconds: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.hold, KeyHold):
            raise InvalidRequest(
                f"key scope hold must be one of {[h.value for h in KeyHold]}, not {self.hold!r}"
            )
        if self.hold is not KeyHold.WINDOW:
            if self.seconds is not None:
                raise InvalidRequest(
                    f"key scope {self.hold.value!r} takes no seconds (only a window does), "
                    f"not {self.seconds!r}"
                )
            return
        seconds = self.seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise InvalidRequest(f"key window must be a number of seconds, not {seconds!r}")
        if not math.isfinite(seconds) or seconds <= 0:
            raise InvalidRequest(f"key window must be positive and finite, not {seconds}")
        if seconds > MAX_KEY_WINDOW_SECONDS:
            raise InvalidRequest(
                f"key window of {seconds} s is too long: at most {MAX_KEY_WINDOW_SECONDS} s "
                "(366 days); a key held longer is the default scope, until pruned"
            )
        object.__setattr__(self, "seconds", float(seconds))

    @classmethod
    def unfinished(cls) -> KeyScope:
        """Held while the job is unfinished."""
        return UNTIL_FINISHED

    @classmethod
    def window(cls, seconds: float) -> KeyScope:
        """Held for ``seconds`` (> 0, at most :data:`MAX_KEY_WINDOW_SECONDS`) from enqueue."""
        return cls(KeyHold.WINDOW, seconds)

    def __str__(self) -> str:
        """``until pruned``, ``while unfinished`` or ``for 600s``: how the key is held."""
        if self.hold is KeyHold.WINDOW:
            return f"for {self.seconds:g}s"
        if self.hold is KeyHold.UNFINISHED:
            return "while unfinished"
        return "until pruned"


UNTIL_PRUNED = KeyScope()
"""The default scope: the key is held until its job is pruned."""

UNTIL_FINISHED = KeyScope(KeyHold.UNFINISHED)
"""The key is held while its job is unfinished."""


def check_key_scope(value: object, key: str | None) -> None:
    """A request's scope: a :class:`KeyScope`, other than the default only with a key."""
    if type(value) is not KeyScope:
        raise InvalidRequest(f"key_scope must be a KeyScope, not {value!r}")
    if key is None and value != UNTIL_PRUNED:
        raise InvalidRequest(f"key_scope {value} needs an idempotency_key to hold")


def key_window(scope: KeyScope) -> timedelta | None:
    """How long after enqueue a window scope's key is free (``None`` for the others).

    Exact to the microsecond, as Python rounds ``timedelta(seconds=...)``; a store
    that computes the instant itself adds this many microseconds."""
    return None if scope.seconds is None else timedelta(seconds=scope.seconds)


def holds_key(scope: KeyScope, state: JobState, created_at: datetime, now: datetime) -> bool:
    """Whether a job that took its key (and never gave it up) still holds it at ``now``."""
    if scope.hold is KeyHold.UNFINISHED:
        return state not in FINISHED_JOB_STATES
    window = key_window(scope)
    return window is None or now < created_at + window


def scope_text(scope: KeyScope) -> str | None:
    """The scope as one column's text: ``None`` for the default (existing rows),
    ``"unfinished"``, or ``"window <seconds>"`` (the float's exact repr)."""
    if scope.hold is KeyHold.PRUNED:
        return None
    if scope.hold is KeyHold.WINDOW:
        return f"{KeyHold.WINDOW.value} {scope.seconds!r}"
    return scope.hold.value


@lru_cache(maxsize=256)
def scope_from_text(text: str | None) -> KeyScope:
    """The scope :func:`scope_text` wrote; ``InvalidRequest`` for text it never writes."""
    if text is None:
        return UNTIL_PRUNED
    hold, _, seconds = text.partition(" ")
    try:
        return KeyScope(KeyHold(hold), float(seconds) if seconds else None)
    except ValueError:
        raise InvalidRequest(f"not a stored key scope: {text!r}") from None
