"""The memory driver's paused queues: records in a dict, each call under the driver's one lock.

The rules come from :mod:`taskharbor.spec.queues`; ``lease`` and
``wait_for_jobs`` leave out the queues this mixin holds as paused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime

from taskharbor.spec.queues import (
    QueueRecord,
    check_paused,
    paused_record,
    queue_names,
    unpaused,
)


class MemoryQueues:
    """The ``queue_pause`` calls of :class:`~taskharbor.drivers.memory.MemoryDriver`."""

    _lock: threading.Lock
    _job_available: threading.Condition
    _now: Callable[[], datetime]

    def __init__(self) -> None:
        self._paused: dict[str, QueueRecord] = {}

    def pause_queues(self, queues: Sequence[str], paused: bool) -> list[QueueRecord]:
        names = queue_names(queues, "pause_queues")
        check_paused(paused, "pause_queues")
        with self._lock:
            now = self._now()
            records = []
            for name in names:
                record = paused_record(self._paused.get(name), name, paused, now)
                if record.paused:
                    self._paused[name] = record
                else:
                    self._paused.pop(name, None)
                records.append(record)
            if not paused:
                self._job_available.notify_all()  # their jobs are ready again
            return records

    def paused_queues(self) -> list[QueueRecord]:
        with self._lock:
            return [self._paused[name] for name in sorted(self._paused)]

    def _leased_queues(self, queues: tuple[str, ...]) -> tuple[str, ...]:
        """The queues a lease or a wait may take jobs from (call with the lock held)."""
        return unpaused(queues, self._paused.keys()) if self._paused else queues
