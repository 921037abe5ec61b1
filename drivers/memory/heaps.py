"""A min-heap of job entries with lazy deletion, for the in-memory driver's indexes.

Heaps cannot delete from the middle cheaply, so invalidation is lazy: every time
a job is (re)placed it gets a new sequence number, and a heap entry counts only
while its number is the job's current one.  Stale entries are skipped when they
reach the top, and a heap whose stale entries outnumber its live ones is rebuilt,
so memory stays proportional to the live jobs.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Generic, TypeVar

from taskharbor.spec.records import JobId

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
