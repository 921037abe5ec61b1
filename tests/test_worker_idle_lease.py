"""The idle wait that leases: on a store with notifications, the I/O thread whose
``wait_for_jobs`` the store's hint ended leases at once (``Worker._wait_then_lease``),
holding the free slots it may fill.  What must stay true: the worker never runs more
than ``concurrency`` jobs, and a stop leaves no job leased that it will not run."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from test_engine_support import EVENTUALLY, FAST, eventually

import taskharbor as th
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.spec import JobFilter, JobRecord, JobState

PATIENT = {**FAST, "poll_interval": EVENTUALLY, "lease": 30.0}
"""Worker options whose idle wait ends only on the store's hint (or a test's hang bound)."""


class GatedStore(MemoryDriver):
    """A memory store whose waits and leases a test can hold and watch."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()
        """Set while a ``wait_for_jobs`` is blocked."""
        self.gate: threading.Event | None = None
        """When set to an event, waits ignore the store's hint until it is set."""
        self.hold_leases: threading.Event | None = None
        """When set to an event, a lease that got jobs returns only once it is set."""
        self.leased = threading.Event()
        """Set when a held lease got its jobs."""

    def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        self.waiting.set()
        try:
            gate = self.gate
            if gate is not None:
                gate.wait(EVENTUALLY)
            else:
                super().wait_for_jobs(queues, timeout)
        finally:
            self.waiting.clear()

    def lease(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker_id: str
    ) -> list[JobRecord]:
        got = super().lease(queues, limit, lease_seconds, worker_id)
        hold = self.hold_leases
        if got and hold is not None:
            self.leased.set()
            hold.wait(EVENTUALLY)
        return got


class WatchedWorker(th.Worker):
    """A worker that says when each idle wait that may lease has returned."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waits_ended = threading.Semaphore(0)

    def _wait_then_lease(self, waiter: Any) -> list[JobRecord] | None:
        try:
            return super()._wait_then_lease(waiter)
        finally:
            self.waits_ended.release()


@contextmanager
def started(worker: th.Worker) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(EVENTUALLY)
        assert not thread.is_alive(), "the worker did not stop"


def running(store: MemoryDriver) -> int:
    return len(store.list_jobs(JobFilter(states=frozenset({JobState.RUNNING}))))


def test_an_idle_wait_holds_the_slots_it_may_fill() -> None:
    """Two slots: one job runs while the idle wait holds the other slot; when it ends,
    the loop may lease one job, and the wait, ended afterwards, one: never three."""
    store = GatedStore()
    app = th.App(driver=store)
    ends = {"first": threading.Event(), "rest": threading.Event()}

    @app.task()
    def hold(which: str) -> None:
        ends[which].wait(EVENTUALLY)

    worker = WatchedWorker(app, concurrency=2, **PATIENT)
    first = hold.enqueue("first")
    store.gate = threading.Event()  # the idle wait ends only when the test says
    with started(worker):
        eventually(lambda: app.get_job(first.id).state is JobState.RUNNING)
        eventually(store.waiting.is_set, what="an idle wait")
        rest = [hold.enqueue("rest") for _ in range(3)]
        ends["first"].set()  # its slot is the loop's again, the other stays the wait's
        eventually(
            lambda: app.get_job(first.id).state is JobState.SUCCEEDED and running(store) >= 1
        )
        store.gate.set()
        assert worker.waits_ended.acquire(timeout=EVENTUALLY)
        assert running(store) == 2
        states = [app.get_job(job.id).state for job in rest]
        assert states.count(JobState.AVAILABLE) == 1, states
        ends["rest"].set()


def test_jobs_an_idle_wait_leased_as_the_worker_stopped_are_not_left_running() -> None:
    store = GatedStore()
    app = th.App(driver=store)
    ran: list[int] = []

    @app.task()
    def noop() -> None:
        ran.append(1)

    worker = WatchedWorker(app, concurrency=4, **PATIENT)
    with started(worker) as thread:
        eventually(store.waiting.is_set, what="an idle wait")
        store.hold_leases = threading.Event()
        job = noop.enqueue()
        assert store.leased.wait(EVENTUALLY)
        worker.stop()
        store.hold_leases.set()
        thread.join(EVENTUALLY)
    assert app.get_job(job.id).state is not JobState.RUNNING


def test_an_idle_wait_ended_after_the_worker_stopped_leases_nothing() -> None:
    store = GatedStore()
    app = th.App(driver=store)

    @app.task()
    def noop() -> None:
        pass

    worker = WatchedWorker(app, concurrency=4, **PATIENT)
    with started(worker) as thread:
        eventually(store.waiting.is_set, what="an idle wait")
        worker.stop()
        thread.join(EVENTUALLY)  # the stop does not wait for the idle wait
        assert not thread.is_alive()
    job = noop.enqueue()  # the store's hint ends the wait
    assert worker.waits_ended.acquire(timeout=EVENTUALLY)
    assert app.get_job(job.id).state is JobState.AVAILABLE
