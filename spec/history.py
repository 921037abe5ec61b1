"""How many jobs finished, per minute: the recent history a store answers.

Capability ``finished_counts`` (:class:`~taskharbor.spec.spi.Capabilities`),
call :meth:`~taskharbor.spec.spi.Driver.finished_per_minute`.  A dashboard
charts throughput and failures over the last hour from it, however long the
dashboard itself has been running.

What is counted
---------------
Every stored job in one of the :data:`FINISHED_OUTCOMES` (the finished states
of the job lifecycle: ``succeeded``, ``dead``, ``cancelled``) whose
``finished_at`` is at or after ``since``, grouped by the UTC minute that holds
its ``finished_at``, its queue and its state, as the job is *now*:

* a job still ``pending``, ``scheduled``, ``available``, ``running`` or
  ``retrying`` is not counted (it has no ``finished_at``);
* a job requeued out of ``dead`` or ``cancelled`` stops being counted (requeue
  clears ``finished_at``), and is counted again, as what it ends as, at the
  minute it ends next;
* a ``dead`` job cancelled out of the dead-letter queue keeps its
  ``finished_at`` (spec/spi.py, event ``cancel``): it counts as ``cancelled``
  at the minute it died;
* a pruned job is gone: it is no longer counted.

*Failures* are the ``dead`` jobs: attempts that failed and were retried are
not counted here.  A job's errors are a list inside the job, which no store
indexes by time, while ``finished_at`` and the state are what every store
already keeps an index or a counter on; a job that failed twice and then
succeeded counts once, as ``succeeded``.  (The jobs waiting to be retried now
are ``count()``'s ``retrying``.)

The window
----------
``since`` is timezone-aware and the start of a UTC minute (seconds and
microseconds zero), so every bucket returned is a whole minute; it is not in
the future (``since <= now``) and at most :data:`MAX_HISTORY` back
(``since >= now - MAX_HISTORY``), so the call's cost has a bound on every
store.  A job that finished exactly at ``since`` is counted.  Buckets come
back by minute, then queue, then state (by name); a bucket with no job is left out
(an empty store gives an empty list).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .errors import InvalidRequest
from .limits import check_aware
from .records import check_name
from .table import FINISHED_JOB_STATES, JobState

MINUTE = timedelta(minutes=1)

MAX_HISTORY = timedelta(days=1)
"""How far back ``finished_per_minute`` may look: ``since >= now - MAX_HISTORY``."""

FINISHED_OUTCOMES: tuple[JobState, ...] = tuple(s for s in JobState if s in FINISHED_JOB_STATES)
"""The states a finished job is counted in (derived from the lifecycle: the states only
an operator moves a job out of), in the lifecycle's order."""


@dataclass(frozen=True, slots=True)
class FinishedCount:
    """How many jobs of ``queue`` are in ``state`` with a ``finished_at`` in ``minute``."""

    minute: datetime
    """The start of the UTC minute (aware, UTC, seconds and microseconds zero)."""
    queue: str
    state: JobState
    """One of :data:`FINISHED_OUTCOMES`."""
    count: int
    """At least 1."""


def minute_of(moment: datetime) -> datetime:
    """The start of the UTC minute that holds ``moment``."""
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def check_history_since(since: object, now: datetime) -> datetime:
    """``since`` in UTC, or ``InvalidRequest`` naming what is wrong with it: not an
    aware datetime, not the start of a minute, later than ``now`` or earlier than
    ``now - MAX_HISTORY``."""
    check_aware(since, "since")
    assert isinstance(since, datetime)
    since = since.astimezone(UTC)
    if since.second or since.microsecond:
        raise InvalidRequest(
            f"since {since.isoformat()} is not the start of a minute: buckets are whole UTC "
            f"minutes, give {minute_of(since).isoformat()} for instance"
        )
    now = now.astimezone(UTC)
    if since > now:
        raise InvalidRequest(
            f"since {since.isoformat()} is in the future (the store's now is {now.isoformat()})"
        )
    if since < now - MAX_HISTORY:
        raise InvalidRequest(
            f"since {since.isoformat()} is more than {MAX_HISTORY} before the store's now "
            f"({now.isoformat()}): finished_per_minute looks back at most that far"
        )
    return since


def check_history_queue(queue: object) -> str | None:
    """``queue`` (None: every queue), or ``InvalidRequest`` when it is not a queue name."""
    if queue is not None:
        check_name(queue, "queue name")
    return queue  # type: ignore[return-value]


def counts_by_minute(
    finished: list[tuple[datetime, str, JobState]],
) -> list[FinishedCount]:
    """The buckets of ``(finished_at, queue, state)`` triples, in the call's order."""
    tally: dict[tuple[datetime, str, JobState], int] = {}
    for finished_at, queue, state in finished:
        key = (minute_of(finished_at), queue, JobState(state))
        tally[key] = tally.get(key, 0) + 1
    return [FinishedCount(m, q, s, n) for (m, q, s), n in sorted(tally.items())]


def ordered_counts(counts: list[FinishedCount]) -> list[FinishedCount]:
    """``counts`` by minute, queue, then state (a driver that groups in its own order)."""
    return sorted(counts, key=lambda c: (c.minute, c.queue, c.state))
