"""``App.wait`` and ``WorkflowHandle.wait`` (and their async forms), on every driver.

A store with notifications wakes the waiter when the job (or a step) finishes:
these tests give it a poll pause far longer than the bound they check, so a
waiter that polled would fail them.  SQLite polls, with the pause it is given.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from driver_registry import DriverFactory
from taskharbor import App, Job, Task, WorkflowState, chain
from taskharbor.spec import Completion, JobId, JobState, SystemClock

pytestmark = pytest.mark.timing

SETTLE = 0.2
"""How long a test lets the waiter begin waiting before the job finishes."""

BOUND = 5.0
"""How soon after the finish the waiter must return."""

NEVER_POLL = 3600.0
"""The poll pause a notified waiter is given: it must not need it."""


@pytest.fixture
def app(driver_factory: DriverFactory) -> Iterator[App]:
    driver = driver_factory(SystemClock())
    driver.migrate()
    with App(driver=driver) as app:
        yield app


@pytest.fixture
def step(app: App) -> Task[int]:
    @app.task(name="step")
    def step(*values: int) -> int:
        return sum(values)

    return step


def poll_pause(app: App) -> float:
    """The pause a test gives: one a notifying store never waits out, else a short one."""
    return NEVER_POLL if app.driver.capabilities.notifications else 0.01


def finish_later(app: App, job_ids: list[JobId]) -> threading.Timer:
    """After :data:`SETTLE`, lease and complete the jobs, one after the other."""

    def finish() -> None:
        for job_id in job_ids:
            (job,) = app.driver.get([job_id])
            (leased,) = app.driver.lease([job.queue], 1, 30.0, "test")
            assert leased.id == job_id and leased.lease_token is not None
            assert app.driver.complete([Completion(job_id, leased.lease_token, 1)]) == []

    timer = threading.Timer(SETTLE, finish)
    timer.start()
    return timer


def timed(wait: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    result = wait()
    return result, time.monotonic() - started


@pytest.mark.parametrize("form", ["sync", "async"])
def test_a_job_waiter_returns_soon_after_the_job_finishes(
    app: App, step: Task[int], form: str
) -> None:
    job = step.enqueue(1)
    timer = finish_later(app, [job.id])
    if form == "sync":
        done, took = timed(lambda: app.wait(job, timeout=30, poll=poll_pause(app)))
    else:
        done, took = timed(
            lambda: asyncio.run(app.wait_async(job, timeout=30, poll=poll_pause(app)))
        )
    timer.join()
    assert isinstance(done, Job) and done.state is JobState.SUCCEEDED
    assert took < SETTLE + BOUND


@pytest.mark.parametrize("form", ["sync", "async"])
def test_a_workflow_waiter_returns_soon_after_its_last_step(
    app: App, step: Task[int], form: str
) -> None:
    handle = app.enqueue(chain(step.s(1), step.s(), step.s()))
    timer = finish_later(app, [status.job_id for status in handle.status().steps])
    if form == "sync":
        state, took = timed(lambda: handle.wait(timeout=30))
    else:
        state, took = timed(lambda: asyncio.run(handle.wait_async(timeout=30)))
    timer.join()
    assert state is WorkflowState.SUCCEEDED
    assert took < SETTLE + BOUND


@pytest.mark.parametrize("form", ["sync", "async"])
def test_a_job_waiter_times_out_on_time(app: App, step: Task[int], form: str) -> None:
    job = step.enqueue(1)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"job {job.id} is still available"):
        if form == "sync":
            app.wait(job, timeout=0.3, poll=poll_pause(app))
        else:
            asyncio.run(app.wait_async(job, timeout=0.3, poll=poll_pause(app)))
    assert 0.29 <= time.monotonic() - started < 0.3 + BOUND


def test_a_cancelled_async_wait_returns_at_once(app: App, step: Task[int]) -> None:
    job = step.enqueue(1)

    async def main() -> None:
        waiting = asyncio.ensure_future(app.wait_async(job, poll=poll_pause(app)))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(asyncio.wait_for(main(), BOUND))
