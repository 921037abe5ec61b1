"""Throughput and failures over the last hour, per minute.

On a store with the capability ``finished_counts`` the chart is read from the
store (``Driver.finished_per_minute``, :func:`from_store`): every job that
finished in each of the last 60 minutes (by ``finished_at``), as it is now, so
a dashboard opened now shows the past hour.  Failures are the ``dead`` jobs
(attempts that were retried are not counted: :mod:`taskharbor.spec.history`).

On a store without it, the dashboard samples the per-state counts instead
(:class:`Throughput`: every few seconds, shared by every page) and charts how
many jobs reached ``succeeded`` and ``dead`` between samples, by minute: that
chart covers only the time since the dashboard started, up to an hour, and a
requeue or a prune that lowers a count between two samples counts as zero.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from taskharbor.spec import FinishedCount, JobState, minute_of

WINDOW = timedelta(hours=1)
BUCKET = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    succeeded: int
    failed: int
    cancelled: int = 0


def window_start(now: datetime) -> datetime:
    """The first minute of the chart that ends with the minute of ``now``."""
    return minute_of(now) - BUCKET * 59


def from_store(counts: Sequence[FinishedCount], now: datetime) -> list[Bucket]:
    """The last hour's 60 minutes, oldest first, from ``Driver.finished_per_minute``
    read since :func:`window_start` (every queue summed; zeros included)."""
    tally: dict[datetime, dict[JobState, int]] = {}
    for count in counts:
        per_state = tally.setdefault(count.minute, {})
        per_state[count.state] = per_state.get(count.state, 0) + count.count
    first = window_start(now)
    buckets = []
    for start in (first + BUCKET * i for i in range(60)):
        per_state = tally.get(start, {})
        buckets.append(
            Bucket(
                start,
                per_state.get(JobState.SUCCEEDED, 0),
                per_state.get(JobState.DEAD, 0),
                per_state.get(JobState.CANCELLED, 0),
            )
        )
    return buckets


class Throughput:
    """Per-minute counts of jobs that succeeded and that died, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[int, int] | None = None
        self._buckets: dict[datetime, list[int]] = {}
        self.since: datetime | None = None

    def observe(self, at: datetime, counts: Mapping[tuple[str, JobState], int]) -> None:
        """Record a sample of ``Driver.count()`` taken at ``at``."""
        totals = (_total(counts, JobState.SUCCEEDED), _total(counts, JobState.DEAD))
        with self._lock:
            if self.since is None:
                self.since = at
            if self._last is not None:
                bucket = self._buckets.setdefault(_minute(at), [0, 0])
                for index, (now_total, before) in enumerate(zip(totals, self._last, strict=True)):
                    bucket[index] += max(0, now_total - before)
            self._last = totals
            for start in [s for s in self._buckets if s <= at - WINDOW]:
                del self._buckets[start]

    def series(self, now: datetime) -> list[Bucket]:
        """The last hour's minutes, oldest first (60 buckets, zeros included)."""
        last = _minute(now)
        with self._lock:
            return [
                Bucket(start, *self._buckets.get(start, (0, 0)))
                for start in (last - BUCKET * i for i in range(59, -1, -1))
            ]


def _total(counts: Mapping[tuple[str, JobState], int], state: JobState) -> int:
    return sum(n for (_, s), n in counts.items() if s == state)


def _minute(at: datetime) -> datetime:
    return minute_of(at)
