"""Flow-control counts of the in-memory driver, kept in step with every state change.

The guards of ``lease`` (:mod:`taskharbor.spec.flow`) are answered from counts,
never by scanning jobs: running jobs per task and per key, the jobs that hold
each key's sequence (a min-heap, so "the earliest holder" is one peek), and the
recent starts of each rate bucket (in time order, so "starts in the window" is
one bisection).  :class:`~taskharbor.drivers.memory.index.JobIndex` calls
:meth:`FlowIndex.enter` and :meth:`FlowIndex.leave` whenever it (re)places or
forgets a job.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right, insort
from collections import Counter
from datetime import datetime, timedelta

from taskharbor.spec.flow import MAX_RATE_WINDOW_SECONDS, OnDead, rate_bucket
from taskharbor.spec.records import JobId
from taskharbor.spec.table import FINISHED_JOB_STATES, JobState

from .rows import JobRow

_FORGET_AFTER = timedelta(seconds=MAX_RATE_WINDOW_SECONDS)
"""A start older than the longest rate window can no longer count."""


class _Holders:
    """The jobs holding one key's sequence; the earliest (smallest id) is the head."""

    __slots__ = ("heap", "members")

    def __init__(self) -> None:
        self.heap: list[JobId] = []
        self.members: set[JobId] = set()

    def add(self, job_id: JobId) -> None:
        if job_id not in self.members:
            self.members.add(job_id)
            heapq.heappush(self.heap, job_id)

    def head(self) -> JobId | None:
        while self.heap and self.heap[0] not in self.members:
            heapq.heappop(self.heap)
        return self.heap[0] if self.heap else None


def _holds_sequence(row: JobRow, state: JobState) -> bool:
    """Whether ``row`` in ``state`` holds back the later jobs of its key's sequence."""
    flow = row.flow
    if flow is None or flow.sequence is None:
        return False
    if state is JobState.DEAD:
        return flow.sequence is OnDead.BLOCK
    return state not in FINISHED_JOB_STATES


class FlowIndex:
    """The counts the lease guards read."""

    def __init__(self) -> None:
        self._tasks: Counter[str] = Counter()
        self._keys: Counter[str] = Counter()
        self._sequences: dict[str, _Holders] = {}
        self._starts: dict[str, list[datetime]] = {}

    def enter(self, row: JobRow, state: JobState) -> None:
        """``row`` is now stored in ``state``."""
        key = row.flow.key if row.flow is not None else None
        if state is JobState.RUNNING:
            self._tasks[row.task] += 1
            if key is not None:
                self._keys[key] += 1
        if key is not None and _holds_sequence(row, state):
            self._sequences.setdefault(key, _Holders()).add(row.id)

    def leave(self, row: JobRow, state: JobState) -> None:
        """``row`` is no longer stored in ``state`` (it moves on, or is deleted)."""
        key = row.flow.key if row.flow is not None else None
        if state is JobState.RUNNING:
            _decrement(self._tasks, row.task)
            if key is not None:
                _decrement(self._keys, key)
        if key is not None and _holds_sequence(row, state):
            holders = self._sequences[key]
            holders.members.discard(row.id)
            if not holders.members:
                del self._sequences[key]

    def held_back(self, row: JobRow, now: datetime) -> dict[str, bool] | None:
        """The lease guards' facts for ``row`` (None when it carries no limits)."""
        flow = row.flow
        if flow is None:
            return None
        rate_exhausted = False
        if flow.rate is not None:
            starts = self._recent_starts(rate_bucket(row.task, flow), now)
            since = now - timedelta(seconds=flow.rate.window)
            rate_exhausted = len(starts) - bisect_right(starts, since) >= flow.rate.starts
        key = flow.key
        return {
            "task_at_limit": flow.concurrency is not None
            and self._tasks[row.task] >= flow.concurrency,
            "key_at_limit": flow.key_concurrency is not None
            and key is not None
            and self._keys[key] >= flow.key_concurrency,
            "sequence_waits": flow.sequence is not None
            and key is not None
            and self._sequences[key].head() != row.id,
            "rate_exhausted": rate_exhausted,
        }

    def sequence_head(self, row: JobRow) -> JobId | None:
        """The sequence head of ``row``'s key, when ``row`` has a sequence."""
        flow = row.flow
        if flow is None or flow.sequence is None or flow.key is None:
            return None
        return self._sequences[flow.key].head()

    def started(self, row: JobRow, now: datetime) -> None:
        """``row`` was just leased: record its start in its rate bucket, if it has one."""
        bucket = rate_bucket(row.task, row.flow)
        if bucket is not None:
            insort(self._starts.setdefault(bucket, []), now)

    def _recent_starts(self, bucket: str | None, now: datetime) -> list[datetime]:
        """The bucket's starts in time order, without those too old to count."""
        starts = self._starts.get(bucket, []) if bucket is not None else []
        old = bisect_right(starts, now - _FORGET_AFTER)
        if old:
            del starts[:old]
        return starts


def _decrement(counter: Counter[str], name: str) -> None:
    counter[name] -= 1
    if not counter[name]:
        del counter[name]
