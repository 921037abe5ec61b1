"""A worker's entry in the store's workers registry (capability ``workers``).

The worker registers when it starts, is seen at each of its heartbeats (a
lease heartbeat marks it seen in the same call; an idle worker calls
``heartbeat_workers``, and registers again if the store forgot it), and
deregisters when it stops cleanly.  Every call runs on the worker's I/O
threads; a failed one is logged by the worker and tried again at the next
heartbeat, since the registry is for people to look at, never for the work.
"""

from __future__ import annotations

import os
import socket
from importlib import metadata

from taskharbor.spec import Driver, WorkerInfo

TTL_LEASES = 3
"""A worker unseen for this many lease lengths (or heartbeat intervals, if longer) is
shown as gone; twice that, it is forgotten (``taskharbor.spec.workers``)."""


def _version() -> str:
    try:
        return metadata.version("taskharbor")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


_VERSION = _version()
"""The TaskHarbor version a worker registers with."""


class Registration:
    """This worker's registration; ``unsure`` while the store may not hold it."""

    def __init__(self, driver: Driver, info: WorkerInfo) -> None:
        self.driver = driver
        self.info = info
        self.enabled = driver.capabilities.workers
        self.unsure = True

    @classmethod
    def of(
        cls,
        driver: Driver,
        worker_id: str,
        queues: tuple[str, ...],
        concurrency: int,
        lease: float,
        heartbeat_interval: float,
    ) -> Registration:
        ttl = TTL_LEASES * max(lease, heartbeat_interval)
        info = WorkerInfo(
            worker_id,
            socket.gethostname() or "unknown",
            os.getpid(),
            queues,
            concurrency,
            _VERSION,
            ttl,
        )
        return cls(driver, info)

    def register(self) -> None:
        self.driver.register_workers([self.info])
        self.unsure = False

    def confirm(self) -> None:
        """Mark this worker seen; register it again if the store no longer holds it."""
        if self.driver.heartbeat_workers([self.info.id]):
            self.register()
        self.unsure = False

    def deregister(self) -> None:
        self.driver.deregister_workers([self.info.id])
