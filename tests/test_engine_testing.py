"""The testing kit: an app on a memory store with a fake clock, jobs run inline."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

import taskharbor as th
from taskharbor.spec import JobState
from taskharbor.testing import Harness


def make_app(tmp_path: Path) -> th.App:
    return th.App(f"sqlite:///{tmp_path / 'real.db'}")


def test_drain_runs_ready_jobs_inline_and_restores_the_store(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    real_store = app.driver
    sent: list[str] = []

    @app.task
    def send_welcome(to: str) -> str:
        sent.append(to)
        return f"sent to {to}"

    with Harness(app) as harness:
        assert app.driver is not real_store
        send_welcome.enqueue("ada@example.com")
        assert sent == []  # enqueueing does not run anything
        (job,) = harness.drain()
        assert (job.state, job.result) == (JobState.SUCCEEDED, "sent to ada@example.com")
        assert sent == ["ada@example.com"]
        assert harness.drain() == []
    assert app.driver is real_store
    assert app.list_jobs() == []  # nothing reached the real store


def test_assertions_on_enqueued_jobs(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    charge = app.task(name="charge")(lambda amount, currency="EUR": None)
    refund = app.task(name="refund")(lambda amount: None)
    with Harness(app) as harness:
        charge.enqueue(10, currency="USD")
        assert harness.assert_enqueued(charge, 10, currency="USD").task == "charge"
        assert harness.enqueued("charge", 10) == []
        harness.assert_not_enqueued(refund)
        harness.assert_not_enqueued(charge, 11)
        with pytest.raises(AssertionError, match=r"no job of charge .* its jobs have: \[\(\(10,\)"):
            harness.assert_enqueued(charge, 10)
        with pytest.raises(AssertionError, match="expected no such job"):
            harness.assert_not_enqueued(charge)


def test_retries_follow_the_backoff_as_time_is_advanced(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    attempts: list[int] = []

    @app.task(max_attempts=3, backoff=th.Backoff.constant(60))
    def flaky() -> str:
        attempts.append(th.current_job().attempt)
        if len(attempts) < 3:
            raise ConnectionError("try later")
        return "ok"

    with Harness(app) as harness:
        job = flaky.enqueue()
        assert [j.state for j in harness.drain()] == [JobState.RETRYING]
        harness.advance(59)
        assert harness.drain() == []
        harness.advance(1)
        assert [j.state for j in harness.drain()] == [JobState.RETRYING]
        assert [j.state for j in harness.drain(advance_time=True)] == [JobState.SUCCEEDED]
        assert attempts == [1, 2, 3]
        assert [e.type for e in app.get_job(job).errors] == ["ConnectionError"] * 2


def test_drain_follows_workflows_and_the_dead_letter_queue(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    add = app.task(name="add")(lambda a, b: a + b)

    @app.task(name="collect")
    async def collect(values: list[int]) -> int:
        await asyncio.sleep(0)
        return sum(values)

    @app.task(name="broken", max_attempts=1)
    def broken() -> None:
        raise th.PermanentError("never works")

    with Harness(app) as harness:
        workflow = app.enqueue(th.chord([add.s(1, 2), add.s(3, 4)], collect.s()))
        dead = broken.enqueue()
        harness.drain()
        assert workflow.result() == 10
        assert app.get_job(dead).state == JobState.DEAD


def test_drain_async_runs_async_handlers_on_the_running_loop(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    @app.task(name="where")
    async def where() -> bool:
        return asyncio.get_running_loop() is loop

    async def main() -> list[th.Job]:
        where.enqueue()
        return await harness.drain_async()

    with Harness(app) as harness:
        loop = asyncio.new_event_loop()
        try:
            (job,) = loop.run_until_complete(main())
        finally:
            loop.close()
    assert job.result is True


def test_a_job_that_keeps_snoozing_stops_the_drain(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    @app.task(name="forever")
    def forever() -> None:
        raise th.Snooze(0)

    with Harness(app) as harness:
        forever.enqueue()
        with pytest.raises(RuntimeError, match="drain ran 50 jobs"):
            harness.drain(max_jobs=50)


HANG_BOUND = 60.0
"""How long a handler below waits for its cancellation flag: a bound on a hang, not a
duration under test (the flag comes at the task's timeout)."""


def test_drain_enforces_task_timeouts_as_a_worker_does(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    @app.task(name="slow_sync", timeout=0.05, max_attempts=2, backoff=th.Backoff.constant(60))
    def slow_sync() -> str:
        flagged = th.current_job().cancel_event.wait(HANG_BOUND)
        return "flag set" if flagged else "never stopped"

    @app.task(name="slow_async", timeout=0.05, max_attempts=1)
    async def slow_async() -> None:
        await asyncio.sleep(HANG_BOUND)

    @app.task(name="quick", timeout=HANG_BOUND)
    def quick() -> str:
        return "in time"

    with Harness(app) as harness:
        jobs = [slow_sync.enqueue(), slow_async.enqueue(), quick.enqueue()]
        harness.drain()
        retrying, dead, done = (app.get_job(job) for job in jobs)
        assert (retrying.state, retrying.run_at) == (
            JobState.RETRYING,
            harness.clock.now() + timedelta(seconds=60),
        )
        assert (dead.state, done.state, done.result) == (
            JobState.DEAD,
            JobState.SUCCEEDED,
            "in time",
        )
        for job in (retrying, dead):
            assert job.last_error is not None and job.last_error.type == "Timeout"
