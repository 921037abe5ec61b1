"""Flow control: the limits a job carries, and the guards of ``lease`` they feed.

A job may carry :class:`FlowLimits` (``EnqueueRequest.flow``, kept for the job's
life in ``JobRecord.flow``).  They hold the job back in ``available`` — never in a
worker — until its ``lease`` is allowed.  The store enforces them atomically
across every worker, from the stored job alone, without the application's code:

* ``concurrency``: at most N jobs of the job's *task* running at once.
* ``key`` with ``key_concurrency``: at most N running jobs that share the key.
  Keys are store-wide: they span tasks and queues.
* ``sequence`` (needs a key; ``key_concurrency`` 1 or unset): the key's sequence
  jobs start one at a time in enqueue order (id order).  A sequence job waits
  while any earlier sequence job of its key is unfinished; a ``dead`` earlier one
  holds it back when that dead job's mode is :attr:`OnDead.BLOCK` (until an
  operator requeues or prunes it) and is passed over when it is
  :attr:`OnDead.SKIP`.
* ``rate``: at most N starts (leases) per window, of the job's task or of its key.
  Only jobs carrying a rate limit record their starts; a start counts while
  ``now < started_at + window``.

Each guard is evaluated with the limits *the candidate job carries*, counting the
store's state as it is (every running job of the task, every running job with the
key, whatever limits those carry).  So a limit changed between deployments has a
defined meaning: jobs enqueued before keep their old limit, jobs enqueued after
obey the new one, and the two never need to agree.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from .errors import InvalidRequest

MAX_RATE_WINDOW_SECONDS: Final = 86_400.0
"""The longest rate window: one day, so a store can forget starts older than that."""

MAX_LIMIT: Final = 1_000_000
"""The largest concurrency or rate count the contract accepts."""

_WINDOWS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([smhd])\s*$")


class OnDead(enum.StrEnum):
    """What a ``dead`` job of a sequence does to the later jobs of its key."""

    BLOCK = "block"
    """They wait until an operator requeues (or prunes) the dead job."""
    SKIP = "skip"
    """They go on as if it had finished."""


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{what} must be an int, not {value!r}")
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidRequest(f"{what} must be between 1 and {MAX_LIMIT}, not {value}")
    return value


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``starts`` leases per ``window`` seconds, of the task or (``per_key``)
    of the job's key."""

    starts: int
    window: float
    per_key: bool = False

    def __post_init__(self) -> None:
        _check_count(self.starts, "rate limit starts")
        window = self.window
        if isinstance(window, bool) or not isinstance(window, int | float):
            raise InvalidRequest(f"rate limit window must be a number of seconds, not {window!r}")
        if not math.isfinite(window) or not 0 < window <= MAX_RATE_WINDOW_SECONDS:
            raise InvalidRequest(
                f"rate limit window must be > 0 and at most {MAX_RATE_WINDOW_SECONDS:g} s "
                f"(one day), not {window}"
            )
        if not isinstance(self.per_key, bool):
            raise InvalidRequest(f"rate limit per_key must be a bool, not {self.per_key!r}")

    @classmethod
    def parse(cls, text: str, *, per_key: bool = False) -> RateLimit:
        """``"100/m"``, ``"5/s"``, ``"1000/h"``, ``"10/30s"``: N starts per window."""
        match = _RATE.match(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidRequest(
                f"rate limit {text!r} is not 'N/unit' (unit s, m, h or d; e.g. '100/m', '10/30s')"
            )
        count, factor, unit = match.groups()
        return cls(int(count), float(factor or 1) * _WINDOWS[unit], per_key)


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """The flow limits of one job (see the module's docstring for their meaning)."""

    concurrency: int | None = None
    key: str | None = None
    key_concurrency: int | None = None
    sequence: OnDead | None = None
    rate: RateLimit | None = None

    def __post_init__(self) -> None:
        from .records import check_name  # records imports this module

        if self.concurrency is not None:
            _check_count(self.concurrency, "concurrency")
        if self.key is not None:
            check_name(self.key, "concurrency key")
        if self.key_concurrency is not None:
            _check_count(self.key_concurrency, "key concurrency")
        if self.sequence is not None and not isinstance(self.sequence, OnDead):
            raise InvalidRequest(f"sequence must be an OnDead, not {self.sequence!r}")
        if self.rate is not None and not isinstance(self.rate, RateLimit):
            raise InvalidRequest(f"rate must be a RateLimit, not {self.rate!r}")
        needs_key = [
            what
            for what, given in (
                ("key concurrency", self.key_concurrency is not None),
                ("a sequence", self.sequence is not None),
                ("a per-key rate limit", self.rate is not None and self.rate.per_key),
            )
            if given
        ]
        if needs_key and self.key is None:
            raise InvalidRequest(f"{needs_key[0]} needs a concurrency key")
        if self.sequence is not None and self.key_concurrency not in (None, 1):
            raise InvalidRequest(
                f"a sequence runs one job of its key at a time: key concurrency must be 1, "
                f"not {self.key_concurrency}"
            )


def rate_bucket(task: str, limits: FlowLimits | None) -> str | None:
    """Where a job's starts are counted: ``task:<task>`` or ``key:<key>`` (``None``
    without a rate limit).  The prefixes keep the two namespaces apart."""
    if limits is None or limits.rate is None:
        return None
    if limits.rate.per_key:
        return f"key:{limits.key}"
    return f"task:{task}"


FLOW_GUARDS: Final = ("task_at_limit", "key_at_limit", "sequence_waits", "rate_exhausted")
"""The guards of ``lease`` (its ``unless`` list): any one holding keeps a job available."""

GROUP_GUARDS: Final = ("task_at_limit", "key_at_limit", "rate_exhausted")
"""The guards whose fact is the same for every available job of one queue and task with
the same limits (a *group*), and which, once holding in a lease call, hold for the rest
of it: the counts they read only grow while a call leases, and its ``now`` is fixed.  So
a lease may pass over a whole group once one of its jobs is held by one of these, which
keeps its cost from growing with the jobs held back.  ``sequence_waits`` is not one of
them: it differs from job to job (the key's sequence head passes, the others wait)."""


def flow_text(limits: FlowLimits) -> str:
    """The limits as compact JSON text, for stores that keep them as one column."""
    rate = limits.rate
    return json.dumps(
        {
            "concurrency": limits.concurrency,
            "key": limits.key,
            "key_concurrency": limits.key_concurrency,
            "sequence": None if limits.sequence is None else limits.sequence.value,
            "rate": None if rate is None else [rate.starts, rate.window, rate.per_key],
        },
        separators=(",", ":"),
        sort_keys=True,
    )


@lru_cache(maxsize=1024)
def flow_from_text(text: str) -> FlowLimits:
    """The limits :func:`flow_text` wrote (cached: an application has few of them).

    Raises ``InvalidRequest`` for text it did not write."""
    try:
        fields = json.loads(text)
        rate = fields.pop("rate")
        sequence = fields.pop("sequence")
        return FlowLimits(
            **fields,
            sequence=None if sequence is None else OnDead(sequence),
            rate=None if rate is None else RateLimit(*rate),
        )
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InvalidRequest(f"not stored flow limits: {text!r} ({exc})") from None
