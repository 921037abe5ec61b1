"""Indexes of the in-memory driver, so that leasing, promoting and rescuing never scan every job.

Each job that some maintenance or consuming path looks for sits in exactly one
heap, chosen by its state:

* ``available``: the heap of its queue, ordered ``(-priority, run_at, id)``
  (the lease order of the SPI);
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

Heaps cannot delete from the middle cheaply, so invalidation is lazy: every
time a job is (re)placed it gets a new sequence number, and a heap entry
counts only while its number is the job's current one.  Stale entries are
skipped when they reach the top, and a heap whose stale entries outnumber its
live ones is rebuilt, so memory stays proportional to the live jobs.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from taskharbor.spec.history import MINUTE, FinishedCount, minute_of
from taskharbor.spec.records import JobId
from taskharbor.spec.table import FINISHED_JOB_STATES, JobState

from .flow import FlowIndex
from .rows import JobRow

Key = TypeVar("Key")

_COMPACT_SLACK = 64
"""Stale entries a heap may carry beyond its live count before it is rebuilt."""


class LazyHeap(Generic[Key]):
    """A min-heap of ``(key, job id, sequence)`` entries with lazy deletion."""

    def __init__(self, is_current: Callable[[JobId, int], bool]) -> None:
        self._entries: list[tuple[Key, JobId, int]] = []
        self._live = 0
        self._is_current = is_current

    def __len__(self) -> int:
        """The number of live entries."""
        return self._live

    def push(self, key: Key, job_id: JobId, seq: int) -> None:
        heapq.heappush(self._entries, (key, job_id, seq))
        self._live += 1

    def forget(self) -> None:
        """One live entry has just gone stale (its job moved on)."""
        self._live -= 1
        if len(self._entries) > 2 * self._live + _COMPACT_SLACK:
            self._entries = [entry for entry in self._entries if self._is_current(*entry[1:])]
            heapq.heapify(self._entries)

    def peek(self) -> tuple[Key, JobId, int] | None:
        """The smallest live entry, dropping stale ones from the top."""
        entries = self._entries
        while entries and not self._is_current(entries[0][1], entries[0][2]):
            heapq.heappop(entries)
        return entries[0] if entries else None

    def pop(self) -> tuple[Key, JobId, int]:
        """Remove and return the smallest live entry (call :meth:`peek` first)."""
        if self.peek() is None:
            raise IndexError("pop from an empty heap")
        self._live -= 1
        return heapq.heappop(self._entries)


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
        self._ready: dict[str, LazyHeap[tuple[int, datetime]]] = {}
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
            heap = self._ready_heap(row.queue)
            heap.push((-row.priority, row.run_at), row.id, seq)
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

    def _ready_heap(self, queue: str) -> LazyHeap[tuple[int, datetime]]:
        heap = self._ready.get(queue)
        if heap is None:
            heap = self._ready[queue] = LazyHeap(self._is_current)
        return heap

    def _take(self, heap: LazyHeap[Any]) -> JobId:
        """Pop the top entry; the job stays placed but no longer sits in a heap."""
        _, job_id, _ = heap.pop()
        self._placements[job_id].heap = None
        return job_id

    # -- queries ----------------------------------------------------------------

    def take_ready(self, queues: Iterable[str]) -> JobId | None:
        """Pop the next job to lease from ``queues``: highest priority, then
        earliest ``run_at``, then lowest id, across all of them."""
        best: tuple[tuple[tuple[int, datetime], JobId, int], LazyHeap[Any]] | None = None
        for queue in queues:
            heap = self._ready.get(queue)
            top = heap.peek() if heap is not None else None
            if top is not None and heap is not None and (best is None or top < best[0]):
                best = (top, heap)
        return None if best is None else self._take(best[1])

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
