"""Queues as an operator sees them: their jobs by state, and whether they are paused.

A pause is kept by the store (:mod:`taskharbor.spec.queues`), so it holds for
every worker on every host: a worker stops taking the queue's jobs at its
next lease, while producers keep enqueueing into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from taskharbor.spec import Driver, InvalidRequest, JobState
from taskharbor.spec.queues import QueueRecord


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """One queue: its name, since when it is paused (``None``: it is not), and how
    many jobs it holds in each state (every state listed, zeros included)."""

    name: str
    paused_at: datetime | None = None
    counts: dict[JobState, int] = field(default_factory=lambda: dict.fromkeys(JobState, 0))

    @property
    def paused(self) -> bool:
        return self.paused_at is not None


def _require_pause(driver: Driver) -> None:
    if not driver.capabilities.queue_pause:
        raise InvalidRequest(
            f"{type(driver).__name__} does not keep paused queues "
            "(capability 'queue_pause'): use a store that does, such as SQLite or PostgreSQL"
        )


def queue_statuses(driver: Driver, names: Sequence[str] | None = None) -> list[QueueStatus]:
    """Every queue that holds jobs or is paused, by name; or the named ones, in order."""
    counts: dict[str, dict[JobState, int]] = {}
    for (queue, state), count in driver.count().items():
        counts.setdefault(queue, dict.fromkeys(JobState, 0))[JobState(state)] = count
    paused = {r.name: r for r in driver.paused_queues()} if driver.capabilities.queue_pause else {}
    wanted = sorted(set(counts) | set(paused)) if names is None else list(names)
    return [
        QueueStatus(
            name,
            paused[name].paused_at if name in paused else None,
            counts.get(name, dict.fromkeys(JobState, 0)),
        )
        for name in wanted
    ]


def pause_queues(driver: Driver, names: Sequence[str], paused: bool) -> list[QueueRecord]:
    """Pause or resume the named queues in the store (each named once, in order)."""
    _require_pause(driver)
    return driver.pause_queues(list(dict.fromkeys(names)), paused)
