"""Threads waiting for jobs to finish, woken by a store's notices (PostgreSQL, Redis).

A call that finishes jobs sends one *notice* when it commits: the ids of the
jobs it finished and, from a store that cannot name every job a workflow
cascade finished in the same call, the ids of their workflows prefixed with
``w`` (``"12,w3,15"``).  A call that finished more than
:data:`NOTICE_MAX_ITEMS` sends :data:`ANY_JOB` instead, which wakes every
waiter: the notice stays small whatever the batch.

A waiter registers a :class:`Watch` of its job ids *before* it reads their
states, then adds their workflows and sleeps: a notice heard in between is
kept and compared then, so a job finishing between the read and the sleep is
not missed, and an unrelated notice does not wake it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

NOTICE_MAX_ITEMS = 100
"""The most ids a notice names; a call that finished more sends :data:`ANY_JOB`."""

ANY_JOB = "*"
"""The notice that wakes every waiter."""


def finished_notice(job_ids: Iterable[int], workflow_ids: Iterable[int] = ()) -> str:
    """The notice of a call that finished ``job_ids`` (in ``workflow_ids``)."""
    items = [str(job_id) for job_id in job_ids]
    items.extend(f"w{workflow_id}" for workflow_id in sorted(set(workflow_ids)))
    return ANY_JOB if len(items) > NOTICE_MAX_ITEMS else ",".join(items)


@dataclass(eq=False)
class Watch:
    """One waiter's interest: the notice items that wake it."""

    items: set[str]
    heard: list[str] | None = field(default_factory=list)
    """Notices heard before the waiter sleeps (None once it sleeps)."""
    woken: threading.Event = field(default_factory=threading.Event)


class FinishedWatches:
    """The watches of one listener; the listener's thread calls :meth:`hear`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: set[Watch] = set()

    def watch(self, job_ids: Iterable[int]) -> Watch:
        """Register interest in ``job_ids``; call before reading their states."""
        watch = Watch({str(job_id) for job_id in job_ids})
        with self._lock:
            self._watches.add(watch)
        return watch

    def sleep(self, watch: Watch, workflow_ids: Iterable[int], timeout: float) -> None:
        """Add ``workflow_ids`` to ``watch`` and sleep until a notice for it or ``timeout``."""
        with self._lock:
            watch.items.update(f"w{workflow_id}" for workflow_id in workflow_ids)
            heard, watch.heard = watch.heard or [], None
            if any(_wakes(notice, watch.items) for notice in heard):
                return
        watch.woken.wait(timeout)

    def forget(self, watch: Watch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def hear(self, notice: str) -> None:
        """A notice arrived: wake the watches it names."""
        with self._lock:
            for watch in self._watches:
                if watch.heard is not None:
                    watch.heard.append(notice)
                elif _wakes(notice, watch.items):
                    watch.woken.set()

    def wake_all(self) -> None:
        """Notices may have been lost (a reconnection): every waiter reads again."""
        with self._lock:
            for watch in self._watches:
                if watch.heard is not None:
                    watch.heard.append(ANY_JOB)
                watch.woken.set()


def _wakes(notice: str, items: set[str]) -> bool:
    return notice == ANY_JOB or not items.isdisjoint(notice.split(","))
