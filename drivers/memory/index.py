"""Indexes of the in-memory driver, so that leasing, promoting and rescuing never scan every job.

Each job that some maintenance or consuming path looks for sits in exactly one
heap (:class:`~taskharbor.drivers.memory.heaps.LazyHeap`), chosen by its state:

* ``available``: in its queue's :class:`~taskharbor.drivers.memory.ready.ReadyQueue`,
  ordered ``(-priority, run_at, id)`` (the lease order of the SPI), a job with
  flow limits in the heap of its group, so a lease passes over held-back jobs a
  group at a time;
* ``scheduled`` / ``retrying``: the *due* heap, ordered by ``run_at`` (promote);
* ``running``: the *lease* heap, ordered by ``lease_expires_at`` (rescue);
* ``succeeded`` / ``dead`` / ``cancelled``: the *finished* heap, ordered by
  ``finished_at`` (prune).

Beside them, the count of finished jobs per ``(minute of finished_at, queue,
state)`` that ``finished_per_minute`` reads, kept in step by the same two
calls (:meth:`JobIndex.place`, :meth:`JobIndex.remove`): one entry per
minute that holds a stored finished job, gone with its last job.

Beside the heaps, :class:`~taskharbor.drivers.memory.flow.FlowIndex` keeps the
counts that the flow-control guards of ``lease`` read.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskharbor.spec.history import MINUTE, FinishedCount, minute_of
from taskharbor.spec.records import JobId
from taskharbor.spec.table import FINISHED_JOB_STATES, JobState

from .flow import FlowIndex
from .heaps import LazyHeap
from .ready import LeaseWalk, Order, ReadyQueue
from .rows import JobRow


@dataclass(slots=True)
class _Placement:
    """Where a job is indexed: its current sequence, state, and heap (None once popped)."""

    seq: int
    state: JobState
    heap: LazyHeap[Any] | None
    minute: datetime | None = None
    """The minute of ``finished_at`` the job is counted in (finished jobs only)."""


class JobIndex:
    """The heaps above plus a count of jobs per ``(queue, state)``."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self._placements: dict[JobId, _Placement] = {}
        self._ready: dict[str, ReadyQueue] = {}
        self._due: LazyHeap[datetime] = LazyHeap(self._is_current)
        self._leases: LazyHeap[datetime] = LazyHeap(self._is_current)
        self._finished: LazyHeap[datetime] = LazyHeap(self._is_current)
        self._counts: Counter[tuple[str, JobState]] = Counter()
        self._finished_per_minute: dict[datetime, Counter[tuple[str, JobState]]] = {}
        self.flow = FlowIndex()

    def _is_current(self, job_id: JobId, seq: int) -> bool:
        placement = self._placements.get(job_id)
        return placement is not None and placement.seq == seq

    # -- keeping the index in step with the rows ------------------------------

    def place(self, row: JobRow) -> None:
        """(Re)index ``row`` after a change of its state or of the key it is sorted by."""
        self.remove(row)
        seq = next(self._seq)
        heap: LazyHeap[Any] | None
        state = row.state
        minute = None
        if state is JobState.AVAILABLE:
            heap = self._ready_queue(row.queue).place(row, seq)
        elif state in (JobState.SCHEDULED, JobState.RETRYING):
            heap = self._due
            heap.push(row.run_at, row.id, seq)
        elif state is JobState.RUNNING:
            if row.lease_expires_at is None:
                raise RuntimeError(f"job {row.id} is running without a lease expiry")
            heap = self._leases
            heap.push(row.lease_expires_at, row.id, seq)
        elif state in FINISHED_JOB_STATES:
            if row.finished_at is None:
                raise RuntimeError(f"job {row.id} is {state} without finished_at")
            heap = self._finished
            heap.push(row.finished_at, row.id, seq)
            minute = minute_of(row.finished_at)
            self._finished_per_minute.setdefault(minute, Counter())[row.queue, state] += 1
        else:
            heap = None
        self._placements[row.id] = _Placement(seq, state, heap, minute)
        self._counts[row.queue, state] += 1
        self.flow.enter(row, state)

    def remove(self, row: JobRow) -> None:
        """Forget ``row`` (before re-placing it, or because it is deleted)."""
        placement = self._placements.pop(row.id, None)
        if placement is None:
            return
        if placement.heap is not None:
            placement.heap.forget()
        if placement.minute is not None:
            counts = self._finished_per_minute[placement.minute]
            counts[row.queue, placement.state] -= 1
            if not counts[row.queue, placement.state]:
                del counts[row.queue, placement.state]
                if not counts:
                    del self._finished_per_minute[placement.minute]
        self.flow.leave(row, placement.state)
        self._counts[row.queue, placement.state] -= 1
        if not self._counts[row.queue, placement.state]:
            del self._counts[row.queue, placement.state]

    def _ready_queue(self, queue: str) -> ReadyQueue:
        ready = self._ready.get(queue)
        if ready is None:
            ready = self._ready[queue] = ReadyQueue(self._is_current)
        return ready

    def _take(self, heap: LazyHeap[Any]) -> JobId:
        """Pop the top entry; the job stays placed but no longer sits in a heap."""
        _, job_id, _ = heap.pop()
        self._placements[job_id].heap = None
        return job_id

    # -- queries ----------------------------------------------------------------

    def walk(self, queues: Iterable[str]) -> LeaseWalk:
        """The candidates of one lease from ``queues``, in lease order across them
        (highest priority, then earliest ``run_at``, then lowest id)."""
        return LeaseWalk([self._ready_queue(queue) for queue in queues], self._placed)

    def _placed(self, job_id: JobId) -> tuple[int, LazyHeap[Order] | None] | None:
        """The job's current sequence and heap, if it is indexed."""
        placement = self._placements.get(job_id)
        return None if placement is None else (placement.seq, placement.heap)

    def take_due(self, now: datetime) -> list[JobId]:
        """Pop every scheduled or retrying job whose ``run_at <= now``, earliest first."""
        return self._take_while(self._due, lambda run_at: run_at <= now)

    def take_expired(self, now: datetime) -> list[JobId]:
        """Pop every running job whose ``lease_expires_at <= now``."""
        return self._take_while(self._leases, lambda expires_at: expires_at <= now)

    def take_finished_before(self, cutoff: datetime) -> list[JobId]:
        """Pop every finished job whose ``finished_at < cutoff``.  A job popped
        but kept must be :meth:`place`-d again."""
        return self._take_while(self._finished, lambda finished_at: finished_at < cutoff)

    def _take_while(
        self, heap: LazyHeap[datetime], wanted: Callable[[datetime], bool]
    ) -> list[JobId]:
        taken: list[JobId] = []
        while (top := heap.peek()) is not None and wanted(top[0]):
            taken.append(self._take(heap))
        return taken

    def next_due(self) -> datetime | None:
        """The earliest ``run_at`` among scheduled and retrying jobs."""
        top = self._due.peek()
        return None if top is None else top[0]

    def has_ready(self, queues: Iterable[str]) -> bool:
        """Whether any of ``queues`` holds an ``available`` job."""
        return any(self._counts[queue, JobState.AVAILABLE] for queue in queues)

    def finished_per_minute(
        self, since: datetime, until: datetime, queue: str | None
    ) -> list[FinishedCount]:
        """The finished jobs counted per minute from ``since`` (a minute's start) to the
        minute of ``until``, by minute, queue, state: one look-up per minute."""
        found: list[FinishedCount] = []
        minute = since
        while minute <= until:
            counts = self._finished_per_minute.get(minute)
            if counts:
                found.extend(
                    FinishedCount(minute, q, state, n)
                    for (q, state), n in sorted(counts.items())
                    if queue in (None, q)
                )
            minute += MINUTE
        return found

    def counts(self) -> Mapping[tuple[str, JobState], int]:
        """How many jobs per ``(queue, state)``; pairs with none are absent."""
        return {key: count for key, count in self._counts.items() if count}
