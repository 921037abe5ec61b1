"""Queue pause and resume: what a store keeps about a queue besides its jobs.

A queue exists by its name alone: jobs name it, and a store needs no record
of it to hold them.  An operator may *pause* a queue: the store records the
pause (with the instant it began), and from then on ``lease`` hands out no
job of that queue, on every worker and host, while everything else goes on:
``enqueue`` accepts jobs into it, ``promote`` makes its due scheduled and
retrying jobs ``available`` (they wait there), running jobs finish, report,
are rescued and retried as usual.  *Resuming* removes the record, and the
next lease takes the queue's jobs again.

The calls (capability ``queue_pause`` of :class:`~taskharbor.spec.spi.Capabilities`):

* ``Driver.pause_queues(queues, paused)``: pause (``True``) or resume
  (``False``) the named queues, atomically; returns one :class:`QueueRecord`
  per name, in order, as stored after the call.  A queue need not have jobs
  to be paused.  Pausing a paused queue keeps its ``paused_at``; resuming a
  queue that is not paused changes nothing.
* ``Driver.paused_queues()``: every paused queue's record, by name.

Pause is not a job state: it is a property of the queue that ``lease`` reads
in its own transaction, so a pause acts on the first lease that begins after
``pause_queues`` returned (a lease already under way may still hand out the
queue's jobs).  That is the whole guarantee a worker needs: it stops taking
jobs of a paused queue at its next poll.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from .errors import InvalidRequest
from .records import check_name, distinct_names


@dataclass(frozen=True, slots=True)
class QueueRecord:
    """A queue as the store keeps it: its name and, while paused, since when."""

    name: str
    paused_at: datetime | None = None
    """When the queue was paused (the instant of the ``pause_queues`` call that paused
    it), or ``None`` while it is not paused."""

    @property
    def paused(self) -> bool:
        return self.paused_at is not None


def queue_names(values: object, what: str) -> tuple[str, ...]:
    """A non-empty batch of distinct queue names (a mutating batch names each once)."""
    return distinct_names(values, what, "queue name", lambda value: check_name(value, "queue name"))


def check_paused(value: object, what: str) -> bool:
    """The ``paused`` flag of ``pause_queues``: a bool, nothing that merely looks true."""
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what}: paused must be a bool, not {value!r}")
    return value


def paused_record(
    stored: QueueRecord | None, name: str, paused: bool, now: datetime
) -> QueueRecord:
    """The record of queue ``name`` after ``pause_queues(..., paused)`` at ``now``.

    ``stored`` is the queue's record before the call (``None``: not paused).
    """
    if not paused:
        return QueueRecord(name)
    if stored is not None and stored.paused_at is not None:
        return stored
    return QueueRecord(name, paused_at=now)


def unpaused(queues: tuple[str, ...], paused: Collection[str]) -> tuple[str, ...]:
    """The queues of a lease that are not paused, in the order given."""
    return tuple(queue for queue in queues if queue not in paused)


__all__ = ["QueueRecord", "check_paused", "paused_record", "queue_names", "unpaused"]
