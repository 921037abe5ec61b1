"""The memory driver's workers registry: records in a dict, each call under the driver's lock.

Every rule comes from :mod:`taskharbor.spec.workers`; a call validates its
batch before it changes anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime

from taskharbor.spec.records import JobId
from taskharbor.spec.table import JobState
from taskharbor.spec.workers import (
    WorkerInfo,
    WorkerRecord,
    check_worker_ids,
    check_workers,
    is_forgotten,
    is_gone,
    registered,
)

from .rows import JobRow


class MemoryWorkers:
    """The ``workers`` calls of :class:`~taskharbor.drivers.memory.MemoryDriver`."""

    _lock: threading.Lock
    _jobs: dict[JobId, JobRow]
    _workers: dict[str, WorkerRecord]
    _now: Callable[[], datetime]

    def _seen(self, worker_ids: Iterable[str], now: datetime) -> list[str]:
        """Mark the stored ones of ``worker_ids`` as seen at ``now``; the others, in order.
        The caller holds the lock."""
        unknown = []
        for worker_id in worker_ids:
            worker = self._workers.get(worker_id)
            if worker is None:
                unknown.append(worker_id)
            else:
                self._workers[worker_id] = replace(worker, last_seen_at=now)
        return unknown

    def _forget_workers(self, now: datetime) -> None:
        for worker in list(self._workers.values()):
            if is_forgotten(worker.last_seen_at, worker.ttl_seconds, now):
                del self._workers[worker.id]

    def register_workers(self, workers: Sequence[WorkerInfo]) -> list[WorkerRecord]:
        infos = check_workers(workers)
        with self._lock:
            now = self._now()
            self._forget_workers(now)
            for info in infos:
                self._workers[info.id] = registered(info, now)
            running = self._running()
            return [self._view(self._workers[info.id], running, now) for info in infos]

    def heartbeat_workers(self, worker_ids: Sequence[str]) -> list[str]:
        ids = check_worker_ids(worker_ids, "heartbeat_workers")
        with self._lock:
            now = self._now()
            self._forget_workers(now)
            return self._seen(ids, now)

    def deregister_workers(self, worker_ids: Sequence[str]) -> None:
        ids = check_worker_ids(worker_ids, "deregister_workers")
        with self._lock:
            self._forget_workers(self._now())
            for worker_id in ids:
                self._workers.pop(worker_id, None)

    def list_workers(self) -> list[WorkerRecord]:
        with self._lock:
            now = self._now()
            running = self._running()
            return [
                self._view(self._workers[worker_id], running, now)
                for worker_id in sorted(self._workers)
            ]

    def _running(self) -> dict[str, list[JobId]]:
        """The running jobs' ids by the worker holding them, ascending."""
        held: dict[str, list[JobId]] = {}
        for row in self._jobs.values():
            if row.state == JobState.RUNNING and row.leased_by is not None:
                held.setdefault(row.leased_by, []).append(row.id)
        return held

    @staticmethod
    def _view(worker: WorkerRecord, running: dict[str, list[JobId]], now: datetime) -> WorkerRecord:
        jobs = tuple(sorted(running.get(worker.id, ())))
        return replace(
            worker, running=jobs, gone=is_gone(worker.last_seen_at, worker.ttl_seconds, now)
        )
