"""th.Worker on every driver: handlers, outcomes, retries, leases, maintenance, stopping."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_engine_support import (
    EVENTUALLY,
    FAST,
    burst,
    eventually,
    fake_app,
    make_app,
    running_worker,
    with_clock,
)

import taskharbor as th
from driver_registry import DriverFactory
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    LEASE_EXPIRED_TYPE,
    FakeClock,
    JobNotFound,
    JobState,
    StoreError,
    SystemClock,
    retry_delay,
)

pytestmark = pytest.mark.timing

# -- handlers and outcomes -----------------------------------------------------------------


def test_sync_handlers_run_on_the_pool_and_async_ones_on_the_loop(
    driver_factory: DriverFactory,
) -> None:
    app = make_app(driver_factory)
    threads: dict[str, str] = {}

    @app.task
    def sync_add(a: int, b: int) -> int:
        threads["sync"] = threading.current_thread().name
        return a + b

    @app.task
    async def async_double(x: int) -> dict[str, int]:
        asyncio.get_running_loop()  # raises outside an event loop
        threads["async"] = threading.current_thread().name
        await asyncio.sleep(0.01)
        return {"double": x * 2}

    jobs = [sync_add.enqueue(1, b=2), async_double.enqueue(21)]
    burst(app)
    results = [app.get_job(job) for job in jobs]
    assert [(j.state, j.result, j.attempt) for j in results] == [
        (JobState.SUCCEEDED, 3, 1),
        (JobState.SUCCEEDED, {"double": 42}, 1),
    ]
    assert threads["sync"].startswith("taskharbor-job")
    assert threads["async"] == threading.current_thread().name


def test_failures_retry_at_the_backoff_time_then_go_dead(driver_factory: DriverFactory) -> None:
    app, clock = fake_app(driver_factory)

    @app.task(max_attempts=3, backoff=th.Backoff.linear(step=10))
    def flaky() -> None:
        raise ValueError(f"attempt {th.current_job().attempt} failed")

    job = flaky.enqueue()
    for attempt, wait in ((1, 10), (2, 20)):
        failed_at = clock.now()
        burst(app)
        current = app.get_job(job)
        assert (current.state, current.attempt) == (JobState.RETRYING, attempt)
        assert current.run_at == failed_at + timedelta(seconds=wait)
        clock.advance(wait - 1)
        burst(app)  # not due yet: nothing runs
        assert app.get_job(job).attempt == attempt
        clock.advance(1)
    burst(app)
    dead = app.get_job(job)
    assert (dead.state, dead.attempt) == (JobState.DEAD, 3)
    assert [(e.attempt, e.type, e.message) for e in dead.errors] == [
        (n, "ValueError", f"attempt {n} failed") for n in (1, 2, 3)
    ]
    assert dead.errors[0].traceback is not None and "in flaky" in dead.errors[0].traceback
    assert "taskharbor/execution.py" not in dead.errors[0].traceback


def test_a_permanent_error_goes_straight_to_dead(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)

    @app.task(max_attempts=5)
    def refuse() -> None:
        raise th.PermanentError("bad address")

    job = refuse.enqueue()
    burst(app)
    dead = app.get_job(job)
    assert (dead.state, dead.attempt, dead.last_error and dead.last_error.type) == (
        JobState.DEAD,
        1,
        "PermanentError",
    )


class Flaky(ConnectionError):
    """A subclass: retry_on and no_retry_on match subclasses, as ``except`` does."""


def test_retry_policy_by_exception_type(driver_factory: DriverFactory) -> None:
    """no_retry_on goes straight to dead; with retry_on, only those retry; no_retry_on wins."""
    app = make_app(driver_factory)
    policy: dict[str, Any] = {"max_attempts": 5, "backoff": th.Backoff.constant(3600)}

    @app.task(retry_on=(ConnectionError, TimeoutError), no_retry_on=(Flaky,), **policy)
    def only_network(kind: str) -> None:
        raise {"network": ConnectionError, "flaky": Flaky, "value": ValueError}[kind](kind)

    @app.task(no_retry_on=ValueError, **policy)
    def not_values(kind: str) -> None:
        raise {"value": ValueError, "key": KeyError}[kind](kind)

    jobs = {
        "retry_on matches": only_network.enqueue("network"),
        "no_retry_on wins over retry_on": only_network.enqueue("flaky"),
        "retry_on does not match": only_network.enqueue("value"),
        "no_retry_on matches": not_values.enqueue("value"),
        "no_retry_on does not match": not_values.enqueue("key"),
    }
    burst(app)
    states = {
        what: (app.get_job(job).state, app.get_job(job).attempt) for what, job in jobs.items()
    }
    assert states == {
        "retry_on matches": (JobState.RETRYING, 1),
        "no_retry_on wins over retry_on": (JobState.DEAD, 1),
        "retry_on does not match": (JobState.DEAD, 1),
        "no_retry_on matches": (JobState.DEAD, 1),
        "no_retry_on does not match": (JobState.RETRYING, 1),
    }
    dead = app.get_job(jobs["no_retry_on matches"])
    assert dead.last_error is not None and dead.last_error.type == "ValueError"


def test_a_task_timeout_is_a_timeout_error_to_the_retry_policy(
    driver_factory: DriverFactory,
) -> None:
    app = make_app(driver_factory)

    @app.task(timeout=0.05, max_attempts=5, no_retry_on=(TimeoutError,))
    async def never_again() -> None:
        await asyncio.sleep(3600)

    @app.task(
        timeout=0.05, max_attempts=5, retry_on=(TimeoutError,), backoff=th.Backoff.constant(3600)
    )
    async def again() -> None:
        await asyncio.sleep(3600)

    dead, retrying = never_again.enqueue(), again.enqueue()
    burst(app)
    assert (app.get_job(dead).state, app.get_job(dead).attempt) == (JobState.DEAD, 1)
    assert app.get_job(retrying).state == JobState.RETRYING


def test_snooze_reschedules_without_using_an_attempt(driver_factory: DriverFactory) -> None:
    app, clock = fake_app(driver_factory)
    seen: list[int] = []

    @app.task(max_attempts=1)
    def wait_for_stock() -> str:
        seen.append(th.current_job().attempt)
        if len(seen) == 1:
            raise th.Snooze(30)
        return "shipped"

    job = wait_for_stock.enqueue()
    burst(app)
    snoozed = app.get_job(job)
    assert (snoozed.state, snoozed.attempt, snoozed.errors) == (JobState.SCHEDULED, 0, ())
    assert snoozed.run_at == clock.now() + timedelta(seconds=30)
    clock.advance(30)
    burst(app)
    done = app.get_job(job)
    assert (done.state, done.result, seen) == (JobState.SUCCEEDED, "shipped", [1, 1])


def test_a_job_of_an_unknown_task_fails_permanently(driver_factory: DriverFactory) -> None:
    producer = make_app(driver_factory)
    consumer = th.App(driver=producer.driver)  # same store, without the task's code
    job = producer.task(name="billing.charge", max_attempts=5)(lambda: None).enqueue()
    burst(consumer)
    dead = app_job = consumer.get_job(job)
    assert (dead.state, dead.attempt) == (JobState.DEAD, 1)
    assert app_job.last_error is not None and app_job.last_error.type == "UnknownTask"
    assert "billing.charge" in app_job.last_error.message


def test_a_result_that_is_not_json_is_a_permanent_failure(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)

    @app.task(max_attempts=3)
    def returns_a_set() -> set[int]:
        return {1, 2}

    job = returns_a_set.enqueue()
    burst(app)
    dead = app.get_job(job)
    assert dead.state == JobState.DEAD and dead.attempt == 1
    assert dead.last_error is not None and dead.last_error.type == "InvalidResult"


def test_timeouts_count_as_failed_attempts(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    stopped: list[str] = []

    @app.task(timeout=0.1, max_attempts=2, backoff=th.Backoff.constant(60))
    def slow_sync() -> None:
        context = th.current_job()
        give_up = time.monotonic() + EVENTUALLY
        while not context.cancelled:  # the worker sets the flag at the timeout
            if time.monotonic() > give_up:
                return  # never told to stop: "sync" is missing below
            time.sleep(0.01)
        stopped.append("sync")

    @app.task(timeout=0.1, max_attempts=1)
    async def slow_async() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append("async")
            raise

    jobs = [slow_sync.enqueue(), slow_async.enqueue()]
    burst(app)
    sync_job, async_job = (app.get_job(job) for job in jobs)
    assert (sync_job.state, sync_job.attempt) == (JobState.RETRYING, 1)
    assert (async_job.state, async_job.attempt) == (JobState.DEAD, 1)
    for job in (sync_job, async_job):
        assert job.last_error is not None and job.last_error.type == "Timeout"
    assert sorted(stopped) == ["async", "sync"]


def test_an_error_a_handler_raises_itself_is_not_taken_for_the_worker_stopping_it(
    driver_factory: DriverFactory,
) -> None:
    """Async handlers run inside their job's task, so the worker must tell its own
    cancellation and timeout apart from the same exception types raised by the handler."""
    app = make_app(driver_factory)

    @app.task(timeout=30, max_attempts=1)
    async def raises_timeout() -> None:
        raise TimeoutError("the upstream API timed out")

    @app.task(max_attempts=1)
    async def raises_cancelled() -> None:
        raise asyncio.CancelledError()

    jobs = [raises_timeout.enqueue(), raises_cancelled.enqueue()]
    burst(app)
    timeout_job, cancelled_job = (app.get_job(job) for job in jobs)
    assert timeout_job.state == JobState.DEAD
    assert timeout_job.last_error is not None
    assert (timeout_job.last_error.type, timeout_job.last_error.message) == (
        "TimeoutError",
        "the upstream API timed out",
    )
    # Nobody asked it to stop: a failed attempt like any other, never a job left running.
    assert cancelled_job.state == JobState.DEAD
    assert cancelled_job.last_error is not None and cancelled_job.last_error.type == "Cancelled"


def test_current_job_describes_the_running_job(driver_factory: DriverFactory) -> None:
    app, clock = fake_app(driver_factory)
    contexts: list[th.JobContext] = []

    @app.task(queue="q", max_attempts=4, timeout=60)
    def inspect() -> None:
        contexts.append(th.current_job())

    job = inspect.enqueue()
    burst(app, queues=["q"])
    (context,) = contexts
    assert (context.id, context.task, context.queue) == (job.id, inspect.name, "q")
    assert (context.attempt, context.max_attempts, context.last_attempt) == (1, 4, False)
    assert context.deadline == clock.now() + timedelta(seconds=60)
    assert not context.cancelled
    with pytest.raises(RuntimeError, match="outside a job handler"):
        th.current_job()


# -- cancellation ---------------------------------------------------------------------------


def test_cancelling_a_running_async_job_cancels_the_handler(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    started = threading.Event()

    @app.task
    async def long_download() -> None:
        started.set()
        await asyncio.sleep(30)

    job = long_download.enqueue()
    with running_worker(app):
        assert started.wait(EVENTUALLY)
        assert app.cancel(job).cancel_requested
        done = app.wait(job, timeout=EVENTUALLY)
    assert (done.state, done.reason) == (JobState.CANCELLED, CANCELLED_BY_REQUEST)


def test_an_async_handler_that_swallows_its_cancellation_still_ends_cancelled(
    driver_factory: DriverFactory,
) -> None:
    app = make_app(driver_factory)
    started = threading.Event()

    @app.task
    async def stubborn() -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # the task must still be usable after the cancel
            return "finished anyway"
        return "finished"

    job = stubborn.enqueue()
    with running_worker(app):
        assert started.wait(EVENTUALLY)
        app.cancel(job)
        done = app.wait(job, timeout=EVENTUALLY)
    assert (done.state, done.reason) == (JobState.CANCELLED, CANCELLED_BY_REQUEST)
    assert done.result is None


def test_cancelling_a_running_sync_job_sets_its_flag(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    started = threading.Event()

    @app.task
    def long_report() -> str:
        started.set()
        context = th.current_job()
        for _ in range(3000):
            time.sleep(0.01)
            context.raise_if_cancelled()
        return "finished"

    job = long_report.enqueue()
    with running_worker(app):
        assert started.wait(EVENTUALLY)
        app.cancel(job)
        done = app.wait(job, timeout=EVENTUALLY)
    assert (done.state, done.reason) == (JobState.CANCELLED, CANCELLED_BY_REQUEST)


# -- leases -----------------------------------------------------------------------------------


def test_heartbeats_keep_a_long_job_leased(driver_factory: DriverFactory) -> None:
    """The job runs for twice its lease on the injected clock: each step of time stays
    inside the lease, and the heartbeat must carry the lease past it before the next."""
    app, clock = fake_app(driver_factory)
    lease = 30.0
    started, finish = threading.Event(), threading.Event()

    @app.task
    def longer_than_the_lease() -> str:
        started.set()
        assert finish.wait(EVENTUALLY)
        return "done"

    job = longer_than_the_lease.enqueue()
    with running_worker(app, lease=lease):
        assert started.wait(EVENTUALLY)
        for _ in range(4):
            expected = clock.advance(lease / 2) + timedelta(seconds=lease)
            eventually(
                lambda at=expected: app.get_job(job).lease_expires_at == at, what="heartbeat"
            )
        finish.set()
        done = app.wait(job, timeout=EVENTUALLY)
    assert (done.state, done.attempt, done.errors) == (JobState.SUCCEEDED, 1, ())


def test_an_expired_lease_is_rescued_and_the_job_runs_again(driver_factory: DriverFactory) -> None:
    app, clock = fake_app(driver_factory)
    task = app.task(name="resumable")(lambda: th.current_job().attempt)
    job = task.enqueue()
    (crashed,) = app.driver.lease(["default"], 1, 30.0, "a-worker-that-died")
    clock.advance(31)
    burst(app)
    rescued = app.get_job(job)
    assert rescued.state is JobState.RETRYING
    clock.set(rescued.run_at)
    burst(app)
    done = app.get_job(job)
    assert (done.state, done.attempt, done.result) == (JobState.SUCCEEDED, 2, 2)
    assert [e.type for e in done.errors] == ["LeaseExpired"]
    assert crashed.id == job.id


def test_a_rescued_job_waits_its_tasks_backoff_as_a_failed_attempt_does(
    driver_factory: DriverFactory,
) -> None:
    """A job that kills its worker must not crash-loop through the fleet: its rescue
    is a failed attempt and waits the task's backoff, exactly as a reported failure."""
    app, clock = fake_app(driver_factory)
    backoff = th.Backoff.exponential(base=10.0, cap=600.0)
    ran: list[int] = []

    @app.task(name="crashy", max_attempts=5, backoff=backoff)
    def crashy() -> None:
        ran.append(th.current_job().id)
        raise ValueError("boom")

    killer = crashy.enqueue()
    (crashed,) = app.driver.lease(["default"], 1, 30.0, "a-worker-that-died")
    failing = crashy.enqueue()
    start = clock.advance(31)
    burst(app)
    assert ran == [failing.id]  # the rescued job did not run again at once
    rescued, failed = app.get_job(killer), app.get_job(failing)
    assert (rescued.state, rescued.attempt) == (JobState.RETRYING, 1)
    assert rescued.run_at == start + retry_delay(backoff.policy, killer.id, 1)
    assert failed.run_at == start + retry_delay(backoff.policy, failing.id, 1)
    assert [e.type for e in rescued.errors] == ["LeaseExpired"]
    clock.set(rescued.run_at - timedelta(microseconds=1))
    burst(app)
    assert app.get_job(killer).attempt == 1 and crashed.id == killer.id
    clock.set(max(rescued.run_at, failed.run_at))
    burst(app)
    assert killer.id in ran


def test_a_worker_that_lost_its_lease_does_not_report(driver_factory: DriverFactory) -> None:
    app, clock = fake_app(driver_factory)
    first_attempt_running = threading.Event()

    @app.task(backoff=th.Backoff.constant(0))  # rescued, it is due again at once
    def stubborn() -> str:
        context = th.current_job()
        if context.attempt == 1:
            first_attempt_running.set()
            while not context.cancelled:  # set when the heartbeat finds the lease lost
                time.sleep(0.01)
            return "stale result"
        return "fresh result"

    job = stubborn.enqueue()
    with running_worker(app, lease=30.0):
        assert first_attempt_running.wait(EVENTUALLY)

        def rescued() -> bool:
            # Heartbeats keep the lease ahead of the clock: only an advance made here
            # can expire it, and none is made once it was rescued (or the second
            # attempt could expire too).
            if app.get_job(job).errors:
                return True
            clock.advance(31)
            return False

        eventually(rescued, what="rescue of the first attempt")
        app.wait(job, timeout=EVENTUALLY)
    done = app.get_job(job)
    assert (done.result, done.attempt) == ("fresh result", 2)
    assert [e.type for e in done.errors] == ["LeaseExpired"]


def test_a_held_job_that_vanishes_loses_only_its_own_lease() -> None:
    """A job deleted while the worker holds it (by hand, or pruned after a rescue) is a
    lost lease for that job only: the heartbeats of the worker's other jobs go on."""
    clock = FakeClock()
    driver = MemoryDriver(clock=clock)
    app = th.App(driver=driver)
    started = {"vanishing": threading.Event(), "staying": threading.Event()}
    lost_seen = threading.Event()
    finish = threading.Event()

    @app.task
    def vanishing() -> None:
        started["vanishing"].set()
        while not th.current_job().cancelled:  # set when the heartbeat finds the lease lost
            time.sleep(0.01)
        lost_seen.set()

    @app.task
    def staying() -> str:
        started["staying"].set()
        assert finish.wait(EVENTUALLY)
        return "stayed"

    gone = vanishing.enqueue()
    kept = staying.enqueue()
    with running_worker(app, lease=30.0, concurrency=2):
        assert started["vanishing"].wait(EVENTUALLY) and started["staying"].wait(EVENTUALLY)
        with driver._lock:  # the job disappears under its lease
            driver._delete_job(driver._jobs[gone.id])
        now = clock.advance(20)
        expected = now + timedelta(seconds=30)
        eventually(lambda: app.get_job(kept).lease_expires_at == expected, what="heartbeat")
        eventually(lost_seen.is_set, what="the vanished job's lease lost")
        finish.set()
        done = app.wait(kept, timeout=EVENTUALLY)
    assert (done.state, done.attempt, done.errors, done.result) == (
        JobState.SUCCEEDED,
        1,
        (),
        "stayed",
    )


# -- concurrency and batching --------------------------------------------------------------------


def test_concurrency_bounds_the_running_handlers(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    lock = threading.Lock()
    running = [0, 0]  # now, most ever

    @app.task
    def busy() -> None:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    app.enqueue_many(busy.s() for _ in range(9))
    burst(app, concurrency=3)
    assert running[1] == 3
    assert len(app.list_jobs(state="succeeded")) == 9


def test_async_handlers_overlap_on_the_loop(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)

    napping: list[int] = []
    met: list[int] = []

    @app.task
    async def nap(n: int) -> None:
        """Waits on the loop until all six nap at once: in a row, none would see the others."""
        napping.append(n)
        give_up = time.monotonic() + EVENTUALLY
        while len(napping) < 6 and time.monotonic() < give_up:
            await asyncio.sleep(0.01)
        if len(napping) == 6:
            met.append(n)

    app.enqueue_many(nap.s(n) for n in range(6))
    burst(app, concurrency=6)
    assert sorted(met) == list(range(6))
    assert len(app.list_jobs(state="succeeded")) == 6


@contextmanager
def counting(app: th.App, method: str) -> Iterator[list[Any]]:
    """Record the arguments of every call of one driver method."""
    calls: list[Any] = []
    original = getattr(app.driver, method)

    def wrapper(*args: Any) -> Any:
        calls.append(args)
        return original(*args)

    setattr(app.driver, method, wrapper)
    try:
        yield calls
    finally:
        delattr(app.driver, method)


def test_reports_the_store_could_not_write_are_retried_not_dropped(
    driver_factory: DriverFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A StoreError (a full disk, a lost connection) may pass: the worker writes the report
    again rather than dropping it and letting the job run a second time."""
    app = make_app(driver_factory)
    runs: list[int] = []

    @app.task(backoff=th.Backoff.constant(0))  # rescued, it is due again at once
    def once() -> int:
        runs.append(1)
        return 7

    job = once.enqueue()
    complete = app.driver.complete
    failures = iter([StoreError("the disk holding the store is full")])

    def flaky_complete(completions: Any) -> Any:
        for error in failures:
            raise error
        return complete(completions)

    monkeypatch.setattr(app.driver, "complete", flaky_complete)
    burst(app)
    done = app.get_job(job)
    assert (done.state, done.result, done.attempt, len(runs)) == (JobState.SUCCEEDED, 7, 1, 1)


def test_a_report_the_store_cannot_write_is_kept_while_its_lease_may_live(
    driver_factory: DriverFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Kept and retried while the lease may live, then dropped: once the lease has
    expired (on the injected clock) the job is rescued and runs again (at-least-once),
    and its second report goes through.  The store refuses reports until its clock
    passes the first lease's expiry, so no wall-clock duration is assumed."""
    app, clock = fake_app(driver_factory)
    lease = 1.0
    runs: list[int] = []

    @app.task(backoff=th.Backoff.constant(0))  # rescued, it is due again at once
    def once() -> int:
        runs.append(th.current_job().attempt)
        return 7

    job = once.enqueue()
    expiry = clock.now() + timedelta(seconds=lease)
    complete = app.driver.complete
    refused: list[int] = []

    def full_disk(completions: Any) -> Any:
        if clock.now() <= expiry:
            refused.append(len(completions))
            raise StoreError("the disk holding the store is full")
        return complete(completions)

    def messages() -> list[str]:
        return [record.getMessage() for record in caplog.records]

    monkeypatch.setattr(app.driver, "complete", full_disk)
    with caplog.at_level(logging.WARNING, logger="taskharbor"), running_worker(app, lease=lease):
        eventually(lambda: any("reports dropped" in m for m in messages()), what="the drop")
        assert app.get_job(job).state is JobState.RUNNING  # its lease has not expired yet
        clock.advance(2 * lease)
        done = app.wait(job, timeout=EVENTUALLY)
    assert (done.state, done.result, done.attempt, runs) == (JobState.SUCCEEDED, 7, 2, [1, 2])
    assert done.errors[-1].type == LEASE_EXPIRED_TYPE
    # Tried again while kept: the worker retries every heartbeat_interval, far inside the lease.
    assert len(refused) >= 2
    assert any("writing reports failed" in m for m in messages())
    assert any("1 reports dropped: their leases have expired" in m for m in messages())


def test_leases_and_reports_are_batched(
    driver_factory: DriverFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reports queued while a write is under way go out together in the next one.  The
    first write is held until every report is queued, so how many writes there are
    does not depend on how the handler threads happened to be scheduled."""
    app = make_app(driver_factory)
    gate = threading.Barrier(10)

    @app.task
    def together() -> None:
        gate.wait(timeout=EVENTUALLY)  # all ten finish at the same instant

    app.enqueue_many(together.s() for _ in range(10))
    worker = th.Worker(app, **{**FAST, "lease": 30.0, "concurrency": 10})
    complete = app.driver.complete
    writes: list[int] = []

    def held_complete(completions: Any) -> Any:
        def all_queued() -> bool:
            return len(completions) + len(worker._outbox) == 10

        if not writes:
            eventually(all_queued, what="every report queued behind the first write")
        writes.append(len(completions))
        return complete(completions)

    monkeypatch.setattr(app.driver, "complete", held_complete)
    with counting(app, "lease") as leases:
        worker.run(burst=True, handle_signals=False)
    first_queues, first_limit = leases[0][0], leases[0][1]
    assert (list(first_queues), first_limit) == (["default"], 10)
    assert sum(writes) == 10 and len(writes) <= 2, writes


# -- maintenance -------------------------------------------------------------------------------


def test_scheduled_jobs_run_when_due(driver_factory: DriverFactory) -> None:
    app, clock = fake_app(driver_factory)
    task = app.task(name="later")(lambda: "ran")
    job = task.options(delay=3600).enqueue()
    with running_worker(app):
        time.sleep(0.1)
        assert app.get_job(job).state == JobState.SCHEDULED
        clock.advance(3600)
        assert app.wait(job, timeout=EVENTUALLY).result == "ran"


def test_old_finished_jobs_are_pruned_past_the_retention(driver_factory: DriverFactory) -> None:
    app, clock = fake_app(driver_factory)
    task = app.task(name="short_lived")(lambda: None)
    job = task.enqueue()
    burst(app)
    clock.advance(120)
    with running_worker(app, retention=60, prune_interval=0):

        def pruned() -> bool:
            try:
                app.get_job(job)
            except JobNotFound:
                return True
            return False

        eventually(pruned, what="pruning")


def test_retention_keeps_the_dead_letter_queue_and_its_idempotency_keys(
    driver_factory: DriverFactory,
) -> None:
    """Dead jobs stay until an operator requeues them or prunes them explicitly: a
    worker's retention prunes succeeded and cancelled jobs only."""
    app, clock = fake_app(driver_factory)
    done = app.task(name="done")(lambda: None)

    @app.task(name="doomed", max_attempts=1)
    def doomed() -> None:
        raise th.PermanentError("no")

    dead = doomed.options(idempotency_key="charge-1").enqueue()
    succeeded = done.enqueue()
    burst(app)
    clock.advance(8 * 86_400)
    with counting(app, "prune") as prunes, running_worker(app, prune_interval=0):
        eventually(lambda: len(prunes) >= 2, what="two prune passes")
    with pytest.raises(JobNotFound):
        app.get_job(succeeded)
    assert app.get_job(dead).state is JobState.DEAD
    assert doomed.options(idempotency_key="charge-1").enqueue().id == dead.id  # still held


def test_the_workers_pruning_keeps_recent_finished_and_unfinished_jobs(
    driver_factory: DriverFactory,
) -> None:
    """Both sides of the retention horizon, on the injected clock: only finished jobs
    older than ``retention`` go.  (Dead jobs are left out: whether retention prunes
    them is the contract's call, not this test's.)"""
    app, clock = fake_app(driver_factory)
    done = app.task(name="done")(lambda: None)

    @app.task(name="flaky", max_attempts=5, backoff=th.Backoff.constant(3600))
    def flaky() -> None:
        raise RuntimeError("again later")

    def finish_one_of_each() -> list[th.Job]:
        succeeded = done.enqueue()
        burst(app)
        return [app.get_job(succeeded), app.cancel(done.options(queue="elsewhere").enqueue())]

    old = finish_one_of_each()
    retrying = flaky.enqueue()
    burst(app)
    waiting = app.enqueue(th.chain(done.options(queue="elsewhere").s(), done.si())).status()
    unfinished = [
        app.get_job(retrying),
        done.options(queue="elsewhere").enqueue(),
        done.options(delay=3600).enqueue(),
        app.get_job(waiting.steps[1].job_id),
        done.options(queue="leased").enqueue(),
    ]
    assert app.driver.lease(["leased"], 1, 3600.0, "another-worker")  # runs all along
    clock.advance(100)
    recent = finish_one_of_each()
    clock.advance(20)  # old ones finished 120 s ago, recent ones 20 s ago
    with counting(app, "prune") as prunes, running_worker(app, retention=60, prune_interval=0):
        eventually(lambda: len(prunes) >= 3, what="three prune passes")
    assert prunes[0] == (clock.now() - timedelta(seconds=60),)
    for job in old:
        with pytest.raises(JobNotFound):
            app.get_job(job)
    kept = [app.get_job(job) for job in recent + unfinished]
    assert [job.state for job in kept] == [
        JobState.SUCCEEDED,
        JobState.CANCELLED,
        JobState.RETRYING,
        JobState.AVAILABLE,
        JobState.SCHEDULED,
        JobState.PENDING,
        JobState.RUNNING,
    ]


# -- middleware and logging ---------------------------------------------------------------------


class Recorder(th.Middleware):
    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events

    def around_enqueue(self, requests: Any, call_next: Any) -> list[th.Job]:
        self.events.append(f"{self.name} enqueue {len(requests)}")
        jobs: list[th.Job] = call_next(requests)
        self.events.append(f"{self.name} enqueued {[job.id for job in jobs]}")
        return jobs

    @contextmanager
    def around_job(self, job: th.JobContext) -> Iterator[None]:
        self.events.append(f"{self.name} start {th.current_job().id}")
        try:
            yield
        except Exception as exc:
            self.events.append(f"{self.name} error {exc}")
            raise
        self.events.append(f"{self.name} end {job.id}")


def test_middleware_wraps_enqueue_and_execution_in_order(driver_factory: DriverFactory) -> None:
    events: list[str] = []
    app = th.App(
        driver=driver_factory(SystemClock()),
        middleware=[Recorder("outer", events)],
    )
    app.use(Recorder("inner", events))

    @app.task(max_attempts=1)
    def work(fail: bool) -> None:
        events.append("handler")
        if fail:
            raise RuntimeError("boom")

    ok = work.enqueue(False)
    assert events == [
        "outer enqueue 1",
        "inner enqueue 1",
        f"inner enqueued [{ok.id}]",
        f"outer enqueued [{ok.id}]",
    ]
    events.clear()
    burst(app)
    assert events == [
        f"outer start {ok.id}",
        f"inner start {ok.id}",
        "handler",
        f"inner end {ok.id}",
        f"outer end {ok.id}",
    ]
    events.clear()
    failing = work.enqueue(True)
    events.clear()
    burst(app)
    assert events[-2:] == ["inner error boom", "outer error boom"]
    assert app.get_job(failing).state == JobState.DEAD


class TraceHeaders(th.Middleware):
    """Adds a header to every request, as a tracing integration does."""

    def around_enqueue(self, requests: Any, call_next: Any) -> list[th.Job]:
        trace = {"traceparent": "00-ab-cd-01"}
        stamped = [replace(r, headers={**r.headers, **trace}) for r in requests]
        jobs: list[th.Job] = call_next(stamped)
        return jobs


def test_headers_added_at_enqueue_reach_the_handler_and_get_job(
    driver_factory: DriverFactory,
) -> None:
    app = th.App(driver=driver_factory(SystemClock()), middleware=[TraceHeaders()])
    seen: list[dict[str, str]] = []

    @app.task()
    def traced() -> None:
        seen.append(dict(th.current_job().headers))

    job = traced.enqueue()
    assert dict(job.headers) == {"traceparent": "00-ab-cd-01"}
    burst(app)
    assert seen == [{"traceparent": "00-ab-cd-01"}]
    assert dict(app.get_job(job).headers) == {"traceparent": "00-ab-cd-01"}


def test_one_info_line_per_job_outcome(
    driver_factory: DriverFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(driver_factory)
    task = app.task(name="logged", max_attempts=1)(lambda ok: None if ok else 1 / 0)
    good, bad = task.enqueue(True), task.enqueue(False)
    with caplog.at_level(logging.INFO, logger="taskharbor"):
        burst(app)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job ")]
    assert len(lines) == 2
    assert any(
        line.startswith(f"job {good.id} logged attempt 1/1 -> succeeded; ran ") for line in lines
    )
    assert any(
        line.startswith(f"job {bad.id} logged attempt 1/1 -> dead; ran ")
        and line.endswith("; ZeroDivisionError: division by zero")
        for line in lines
    )


def test_the_outcome_line_says_how_long_the_attempt_ran_and_when_the_next_one_runs(
    driver_factory: DriverFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The attempt's duration is "ran ...": never to be read as the retry delay."""
    app, clock = fake_app(driver_factory)
    start = clock.now()

    @app.task(name="upload", max_attempts=3, backoff=th.Backoff.constant(4.2))
    def upload() -> None:
        raise ConnectionError("storage timed out")

    @app.task(name="later")
    def later() -> None:
        raise th.Snooze(90)

    @app.task(name="tomorrow")
    def tomorrow() -> None:
        raise th.Snooze(86_400)

    failing, snoozing, far = upload.enqueue(), later.enqueue(), tomorrow.enqueue()
    with caplog.at_level(logging.INFO, logger="taskharbor"):
        burst(app)
    lines = {
        int(message.split()[1]): message
        for message in (r.getMessage() for r in caplog.records)
        if message.startswith("job ")
    }
    retry_at = (start + timedelta(seconds=4.2)).strftime("%H:%M:%S")
    assert re.fullmatch(
        rf"job {failing.id} upload attempt 1/3 -> retrying; ran \d+\.\d{{3}}s; "
        rf"next attempt at {retry_at} UTC \(in 4\.2s\); ConnectionError: storage timed out",
        lines[failing.id],
    ), lines[failing.id]
    snooze_at = (start + timedelta(seconds=90)).strftime("%H:%M:%S")
    assert re.fullmatch(
        rf"job {snoozing.id} later attempt 1/3 -> scheduled; ran \d+\.\d{{3}}s; "
        rf"runs again at {snooze_at} UTC \(in 90s\)",
        lines[snoozing.id],
    ), lines[snoozing.id]
    next_day = (start + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
    assert lines[far.id].endswith(f"; runs again at {next_day} UTC (in 24h00m)"), lines[far.id]


# -- stopping -------------------------------------------------------------------------------------


def test_a_graceful_stop_lets_running_jobs_finish(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    started = threading.Event()

    @app.task
    def finishing() -> str:
        started.set()
        time.sleep(0.3)
        return "finished"

    job = finishing.enqueue()
    queued = finishing.options(delay=3600).enqueue()
    with running_worker(app, shutdown_timeout=10):
        assert started.wait(EVENTUALLY)
    assert app.get_job(job).result == "finished"
    assert app.get_job(queued).state == JobState.SCHEDULED


def test_jobs_running_past_the_shutdown_deadline_are_released(
    driver_factory: DriverFactory,
) -> None:
    app = make_app(driver_factory)
    started = threading.Barrier(3)

    @app.task
    async def endless_async() -> None:
        await asyncio.to_thread(started.wait, EVENTUALLY)
        await asyncio.sleep(60)

    @app.task
    def endless_sync() -> None:
        started.wait(EVENTUALLY)
        while not th.current_job().cancelled:
            time.sleep(0.01)

    jobs = [endless_async.enqueue(), endless_sync.enqueue()]
    with running_worker(app, shutdown_timeout=0.1):
        started.wait(EVENTUALLY)
    for job in (app.get_job(job) for job in jobs):
        assert job.state in (JobState.SCHEDULED, JobState.AVAILABLE)
        assert (job.attempt, job.errors) == (0, ())  # released: the attempt is given back


def test_run_async_works_inside_an_existing_loop(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    task = app.task(name="embedded")(lambda: "ok")
    job = task.enqueue()
    worker = th.Worker(app, poll_interval=0.01)
    asyncio.run(worker.run_async(burst=True))
    assert app.get_job(job).result == "ok"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queues": []}, "at least one queue"),
        ({"concurrency": 0}, "concurrency"),
        ({"lease": 0}, "lease duration"),
        ({"shutdown_timeout": -1}, "shutdown_timeout"),
        ({"lease": 1e12}, "lease duration of 1000000000000.0 s is too long"),
        ({"retention": float("inf")}, "retention must be >= 0 and finite, not inf"),
        ({"heartbeat_interval": 1e300}, "heartbeat_interval of 1e"),
        ({"shutdown_timeout": float("inf")}, "shutdown_timeout must be >= 0 and finite"),
    ],
)
def test_bad_worker_settings_are_refused(
    driver_factory: DriverFactory, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(th.InvalidRequest, match=message):
        th.Worker(make_app(driver_factory), **options)


def test_two_workers_on_one_store_run_each_job_once(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)
    runs: list[tuple[int, str]] = []
    lock = threading.Lock()

    @app.task
    def once() -> None:
        with lock:
            runs.append((th.current_job().id, threading.current_thread().name))
        time.sleep(0.005)

    jobs = app.enqueue_many(once.s() for _ in range(40))
    with running_worker(app, concurrency=4), running_worker(app, concurrency=4):
        for job in jobs:
            app.wait(job, timeout=EVENTUALLY)
    assert sorted(job_id for job_id, _ in runs) == sorted(job.id for job in jobs)
    assert all(app.get_job(job).attempt == 1 for job in jobs)


def test_stored_errors_are_bounded(driver_factory: DriverFactory) -> None:
    app = make_app(driver_factory)

    @app.task(max_attempts=1)
    def verbose(depth: int) -> None:
        if depth:
            verbose(depth - 1)  # a deep traceback
        raise ValueError("x" * 50_000)

    job = verbose.enqueue(200)
    burst(app)
    (error,) = app.get_job(job).errors
    assert error.type == "ValueError"
    assert 2_000 <= len(error.message) < 2_100 and "characters cut" in error.message
    trace = error.traceback
    assert trace is not None and len(trace) < 8_100 + len(error.message)
    assert "earlier frames cut" in trace
    assert 'raise ValueError("x" * 50_000)' in trace  # the raising frame is kept
    assert trace.endswith(f"ValueError: {error.message}\n")


@pytest.mark.parametrize("seconds", [1e12, float("inf"), -1])
def test_a_snooze_out_of_range_is_refused_where_it_is_raised(seconds: float) -> None:
    with pytest.raises(th.InvalidRequest, match="Snooze seconds"):
        th.Snooze(seconds)


def test_a_worker_warns_at_start_about_task_queues_it_does_not_serve(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = th.App("memory://")
    app.task(name="mail.send", queue="mail")(lambda: None)
    app.task(name="mail.bounce", queue="mail")(lambda: None)
    app.task(name="report", queue="reports")(lambda: None)
    app.task(name="resize")(lambda: None)  # the default queue, served below
    with caplog.at_level(logging.WARNING, logger="taskharbor"):
        burst(app, queues=["default", "reports"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "does not serve queue(s) 'mail' used by the app's tasks: 'mail': " in warnings[0]
    assert warnings[0].split("tasks: ")[1].startswith("'mail': mail.bounce, mail.send;")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="taskharbor"):
        burst(app, queues=["default", "reports", "mail"])
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []


# -- the store's clock failing or stalling ----------------------------------------------


class BrokenClock:
    """A store clock that fails every read (a lost connection on PostgreSQL)."""

    def __init__(self) -> None:
        self.reads = 0

    def now(self) -> datetime:
        self.reads += 1
        raise StoreError("connection reset while reading the clock")


class StalledClock:
    """A store clock whose reads hang until :meth:`release` (a pool with no free
    connection, a server that does not answer)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.reads = 0

    def now(self) -> datetime:
        self.reads += 1
        self.released.wait()
        return SystemClock().now()

    def release(self) -> None:
        self.released.set()


def clock_tasks(app: th.App) -> tuple[th.Task[Any], th.Task[Any]]:
    """A task with a timeout (its deadline is placed on the store's time) and one that fails
    (its retry time is read from the store's clock)."""
    timed = app.task(name="timed", timeout=3600)(lambda: "done")
    failing = app.task(name="failing", max_attempts=3, backoff=th.Backoff.constant(3600))(
        lambda: 1 / 0
    )
    return timed, failing


def test_a_store_clock_that_fails_does_not_stop_the_worker(
    driver_factory: DriverFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Leased jobs still start and report (on this machine's clock, logged); maintenance
    fails its pass and tries again; the worker drains and stops as asked."""
    inner = make_app(driver_factory).driver
    clock = BrokenClock()
    app = th.App(driver=with_clock(inner, clock))
    timed, failing = clock_tasks(app)
    jobs = [timed.enqueue(), failing.enqueue()]
    with caplog.at_level(logging.INFO, logger="taskharbor"):
        burst(app, retention=3600, prune_interval=0)
    done, retrying = (app.get_job(job) for job in jobs)
    assert (done.state, done.result) == (JobState.SUCCEEDED, "done")
    assert (retrying.state, retrying.attempt) == (JobState.RETRYING, 1)
    assert clock.reads >= 1  # the failure's retry time (the deadline is the lease's time)
    fallbacks = [
        r.getMessage()
        for r in caplog.records
        if "reading the store's clock failed" in r.getMessage()
    ]
    assert fallbacks and all(
        line.endswith(
            "failed: StoreError: connection reset while reading the clock; "
            "using this machine's clock"
        )
        for line in fallbacks
    ), fallbacks

    # Stopping: a job still running at the shutdown deadline is released all the same.
    started, finish = threading.Event(), threading.Event()

    @app.task(name="long")
    def long() -> None:
        started.set()
        finish.wait(EVENTUALLY)

    job = long.enqueue()
    try:
        with running_worker(app, shutdown_timeout=0):
            assert started.wait(EVENTUALLY)
    finally:
        finish.set()
    released = app.get_job(job)
    assert released.state != JobState.RUNNING and released.attempt == 0


def test_a_store_clock_that_stalls_does_not_stop_the_worker(
    driver_factory: DriverFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A clock read is waited for a third of the lease, then this machine's clock serves;
    reads in flight are shared, so the stalled ones hold one I/O thread, not all of them."""
    inner = make_app(driver_factory).driver
    clock = StalledClock()
    app = th.App(driver=with_clock(inner, clock))
    timed, failing = clock_tasks(app)
    jobs = [timed.enqueue(), failing.enqueue(), *(failing.enqueue() for _ in range(5))]
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            burst(app, lease=3.0, retention=3600, prune_interval=0)
            outcome.append(None)
        except BaseException as error:  # reported below
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    try:
        with caplog.at_level(logging.WARNING, logger="taskharbor"):
            thread.start()
            thread.join(EVENTUALLY)
            assert not thread.is_alive(), "the worker hung on the store's clock"
    finally:
        clock.release()
    assert outcome == [None]
    states = [app.get_job(job).state for job in jobs]
    assert states == [JobState.SUCCEEDED] + [JobState.RETRYING] * 6
    assert clock.reads == 1  # every later caller waited for the same read
    assert any(
        "the store's clock did not answer within 1 s" in r.getMessage() for r in caplog.records
    )


def test_a_wait_for_the_stores_clock_that_is_cancelled_as_its_read_ends_is_cancelled() -> None:
    """The worker ends a burst by cancelling its maintenance loop, which may be waiting for
    the store's clock.  Cancelled in the loop pass where the read ends, the wait must still
    end cancelled: ``asyncio.wait_for`` (Python 3.11) returned the read instead, and the
    maintenance loop ran on, so ``run(burst=True)`` never returned (1 run in ~20)."""
    worker = th.Worker(th.App(driver=MemoryDriver(FakeClock())), **FAST)

    async def cancelled_as_the_read_ends() -> None:
        read: asyncio.Future[datetime] = asyncio.get_running_loop().create_future()
        worker._clock_read = read  # the read in flight that the wait shares
        waiting = asyncio.ensure_future(worker._store_time())
        await asyncio.sleep(0)  # it waits for the read now
        read.set_result(FakeClock().now())
        waiting.cancel()  # in the same pass: the wait has not seen the read end yet
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(cancelled_as_the_read_ends())


def test_a_timed_out_sync_handler_never_overlaps_its_own_retry(
    driver_factory: DriverFactory,
) -> None:
    """Its thread cannot be stopped, so the job keeps its lease (heartbeated) until the
    thread returns, and only then fails with Timeout and retries."""
    app = make_app(driver_factory)
    lock = threading.Lock()
    running: list[int] = []
    overlapped: list[list[int]] = []
    flagged, let_go = threading.Event(), threading.Event()

    @app.task(name="stubborn", timeout=0.05, max_attempts=2, backoff=th.Backoff.constant(0))
    def stubborn() -> int:
        job = th.current_job()
        with lock:
            running.append(job.attempt)
            if len(running) > 1:
                overlapped.append(list(running))
        try:
            while job.attempt == 1 and not let_go.is_set():
                if job.cancelled:  # past the timeout: the worker set the flag
                    flagged.set()
                let_go.wait(0.01)
            return job.attempt
        finally:
            with lock:
                running.remove(job.attempt)

    job = stubborn.enqueue()
    with running_worker(app, concurrency=2), running_worker(app, concurrency=2):
        assert flagged.wait(EVENTUALLY)
        timed_out_lease = app.get_job(job).lease_expires_at
        # Attempt 1 is still running: either its lease is heartbeated on (right), or
        # its failure was reported and attempt 2 started beside it (the overlap).
        eventually(
            lambda: bool(overlapped) or app.get_job(job).lease_expires_at != timed_out_lease,
            what="a heartbeat of the timed-out attempt, or an overlap",
        )
        assert not overlapped, overlapped
        held = app.get_job(job)
        assert (held.state, held.attempt, held.errors) == (JobState.RUNNING, 1, ())
        let_go.set()
        eventually(lambda: app.get_job(job).finished, what="the retry")
    done = app.get_job(job)
    assert (done.state, done.result, done.attempt) == (JobState.SUCCEEDED, 2, 2)
    assert [error.type for error in done.errors] == ["Timeout"]
    assert not overlapped


def test_a_worker_opens_its_apps_store_off_the_event_loop(tmp_path: Path) -> None:
    """th.App(url) opens on first use; a worker's first use is on a thread, not the loop."""
    app = th.App(f"sqlite:///{tmp_path / 'lazy.db'}")
    task = app.task(name="work")(lambda: None)
    opened_on: list[bool] = []
    opener = app._opener
    assert opener is not None

    def opening() -> Any:
        try:
            asyncio.get_running_loop()
            opened_on.append(True)
        except RuntimeError:
            opened_on.append(False)
        return opener()

    app._opener = opening
    burst(app)
    assert opened_on == [False]
    task.enqueue()
    burst(app)
    assert app.list_jobs(state="succeeded")[0].task == "work"
    app.close()
