"""Throughput and failures over the last hour, from samples of ``Driver.count``.

The SPI has no history of finished jobs, so the dashboard samples the
per-state counts (every few seconds, shared by every page) and charts how
many jobs reached ``succeeded`` and ``dead`` between samples, by minute.  The
chart therefore covers the time since the dashboard started, up to an hour;
a requeue or a prune that lowers a count between two samples counts as zero.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from taskharbor.spec import JobState

WINDOW = timedelta(hours=1)
BUCKET = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    succeeded: int
    failed: int


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
    return at.replace(second=0, microsecond=0)
