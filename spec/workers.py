"""The workers registry in the contract: who is serving the store, and what each runs.

Capability ``workers`` (:class:`~taskharbor.spec.spi.Capabilities`).  A worker
registers itself when it starts (:class:`WorkerInfo`: id, host, pid, queues,
concurrency, version, and ``ttl_seconds``, how long it may go unseen),
is *seen* again at each of its heartbeats, and deregisters when it stops
cleanly.  The store answers with :class:`WorkerRecord`: the registration,
when it started and was last seen, the jobs it is running (its live leases)
and whether it is *gone*.

Rules (every one reads the call's now):

* ``register_workers`` stores each worker by id (a known id is replaced):
  ``started_at = last_seen_at = now``.
* A worker is *seen* (``last_seen_at = now``) by ``heartbeat_workers`` naming
  it, and by every ``heartbeat`` that extends a live lease it holds
  (``leased_by``), so a busy worker costs no extra round trip.
* It is *gone* once ``now >= last_seen_at + ttl_seconds`` (:func:`is_gone`),
  and is *forgotten* (deleted) by any ``register_workers``,
  ``heartbeat_workers`` or ``deregister_workers`` call once ``now >=
  last_seen_at + 2 * ttl_seconds`` (:func:`is_forgotten`): an operator sees a
  vanished worker as gone for one more ``ttl_seconds``, then not at all.
* ``heartbeat_workers`` returns the ids it did not find (never registered, or
  forgotten): such a worker registers again.
* ``deregister_workers`` deletes the named workers; unknown ids are ignored
  (a clean stop may come after the store forgot the worker).
* ``list_workers`` returns every stored worker (gone ones too), by id, each
  with ``running``: the ids of the ``running`` jobs whose ``leased_by`` is
  that worker, ascending.  It changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import InvalidRequest
from .records import JobId, check_name, check_queues, check_seconds, distinct_names

WORKER_CONCURRENCY_MAX = 100_000
FORGET_AFTER_TTLS = 2
"""A worker is deleted once unseen for this many of its ``ttl_seconds``."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker says about itself when it registers."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    version: str
    ttl_seconds: float
    """How long the worker may go unseen before it is shown as gone (a few lease
    lengths: longer than its heartbeat interval by a safe margin)."""

    def __post_init__(self) -> None:
        check_name(self.id, "worker id")
        check_name(self.host, "worker host")
        if isinstance(self.pid, bool) or not isinstance(self.pid, int) or self.pid < 0:
            raise InvalidRequest(f"worker {self.id}: pid must be an int >= 0, not {self.pid!r}")
        if not isinstance(self.queues, tuple):
            raise InvalidRequest(f"worker {self.id}: queues must be a tuple of queue names")
        check_queues(self.queues, f"worker {self.id}")
        concurrency = self.concurrency
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise InvalidRequest(
                f"worker {self.id}: concurrency must be an int, not {concurrency!r}"
            )
        if not 1 <= concurrency <= WORKER_CONCURRENCY_MAX:
            raise InvalidRequest(
                f"worker {self.id}: concurrency must be between 1 and {WORKER_CONCURRENCY_MAX}, "
                f"not {concurrency}"
            )
        check_name(self.version, "worker version")
        check_seconds(self.ttl_seconds, f"worker {self.id} ttl_seconds", positive=True)


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A registered worker as the store keeps it, read at one instant.

    ``running`` lists the jobs it holds live leases on; ``gone`` says whether it
    was unseen for its ``ttl_seconds`` at the call's now (:func:`is_gone`).
    """

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    version: str
    ttl_seconds: float
    started_at: datetime
    last_seen_at: datetime
    running: tuple[JobId, ...] = ()
    gone: bool = False


def registered(info: WorkerInfo, now: datetime) -> WorkerRecord:
    """The record ``register_workers`` stores for ``info`` at ``now``."""
    return WorkerRecord(
        id=info.id,
        host=info.host,
        pid=info.pid,
        queues=info.queues,
        concurrency=info.concurrency,
        version=info.version,
        ttl_seconds=info.ttl_seconds,
        started_at=now,
        last_seen_at=now,
    )


def is_gone(last_seen_at: datetime, ttl_seconds: float, now: datetime) -> bool:
    """Whether a worker last seen at ``last_seen_at`` counts as gone at ``now``."""
    return now >= last_seen_at + timedelta(seconds=ttl_seconds)


def is_forgotten(last_seen_at: datetime, ttl_seconds: float, now: datetime) -> bool:
    """Whether a worker last seen at ``last_seen_at`` is deleted at ``now``."""
    return now >= last_seen_at + timedelta(seconds=FORGET_AFTER_TTLS * ttl_seconds)


def check_workers(workers: object) -> tuple[WorkerInfo, ...]:
    """A non-empty batch of :class:`WorkerInfo`, each id once."""
    if not isinstance(workers, list | tuple) or not workers:
        raise InvalidRequest("register_workers: empty batch (give at least one worker)")
    for worker in workers:
        if not isinstance(worker, WorkerInfo):
            raise InvalidRequest(
                f"register_workers: expected WorkerInfo, got {type(worker).__name__}"
            )
    check_worker_ids([worker.id for worker in workers], "register_workers")
    return tuple(workers)


def check_worker_ids(ids: object, what: str) -> tuple[str, ...]:
    """A non-empty batch of worker ids, each once."""
    return distinct_names(ids, what, "worker id", lambda value: check_name(value, "worker id"))


def ordered(records: Sequence[WorkerRecord]) -> list[WorkerRecord]:
    """Records by id, as ``list_workers`` returns them."""
    return sorted(records, key=lambda record: record.id)
