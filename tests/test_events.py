"""Event hooks: what a subscriber hears from producers and workers, and what it costs unheard."""

from __future__ import annotations

import logging
import threading
from collections import Counter

import pytest
from test_engine_support import EVENTUALLY, FAST, burst, eventually, running_worker

import taskharbor as th
from taskharbor import events
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.events import Event
from taskharbor.spec import FakeClock, InvalidRequest, JobState
from taskharbor.testing import Harness

pytestmark = pytest.mark.timing


MIX_OUTCOMES = {
    ("ok", "succeeded"): 1,
    ("flaky", "retrying"): 1,
    ("flaky", "succeeded"): 1,
    ("doomed", "retrying"): 1,
    ("doomed", "dead"): 1,
    ("refused", "dead"): 1,
    ("sleepy", "snoozed"): 1,
    ("sleepy", "succeeded"): 1,
    ("stopped", "cancelled"): 1,
}
"""What :func:`mixed_app`'s six jobs end with, attempt by attempt: (task, outcome) -> count."""


def recorder(app: th.App, *kinds: str) -> list[Event]:
    heard: list[Event] = []
    app.events.subscribe(heard.append, *kinds)
    return heard


def mixed_app() -> tuple[th.App, dict[str, th.Job]]:
    """An app with one job of each outcome, enqueued: succeeded, retried then succeeded,
    retried then dead, dead at once, snoozed then succeeded, cancelled while running."""
    app = th.App("memory://")
    declare_mixed_tasks(app)
    jobs = {task: app.enqueue(app.tasks[task].s()) for task in app.tasks}
    return app, jobs


def declare_mixed_tasks(app: th.App) -> None:
    """The tasks of :func:`mixed_app` (each keeps its state in this process)."""
    flaky_runs: list[int] = []
    snoozed: list[int] = []

    @app.task(name="ok")
    def ok() -> str:
        return "done"

    @app.task(name="flaky", backoff=th.Backoff.constant(0))
    def flaky() -> str:
        flaky_runs.append(1)
        if len(flaky_runs) == 1:
            raise ConnectionError("try again")
        return "done"

    @app.task(name="doomed", max_attempts=2, backoff=th.Backoff.constant(0))
    def doomed() -> None:
        raise ValueError("never works")

    @app.task(name="refused")
    def refused() -> None:
        raise th.PermanentError("no")

    @app.task(name="sleepy")
    def sleepy() -> str:
        if not snoozed:
            snoozed.append(1)
            raise th.Snooze(0)
        return "awake"

    @app.task(name="stopped")
    def stopped() -> None:
        job = th.current_job()
        app.cancel(job.id)
        job.cancel_event.wait(EVENTUALLY)
        job.raise_if_cancelled()


def test_a_worker_fires_one_outcome_per_attempt_after_the_store_recorded_it() -> None:
    app, _ = mixed_app()
    heard = recorder(app)
    seen_states: list[JobState] = []
    app.events.subscribe(
        lambda event: seen_states.append(app.get_job(event.job.id).state),  # type: ignore[union-attr]
        *events.OUTCOMES,
    )
    burst(app)
    outcomes = Counter((e.job.task, e.kind) for e in heard if e.kind in events.OUTCOMES)  # type: ignore[union-attr]
    assert outcomes == Counter(MIX_OUTCOMES)
    # Fired once the store has the outcome: a subscriber reading the job sees it.
    assert JobState.RUNNING not in seen_states
    started = [e for e in heard if e.kind == events.STARTED]
    assert len(started) == sum(outcomes.values())
    kinds = [e.kind for e in heard]
    assert kinds[0] == events.WORKER_STARTED and kinds[-1] == events.WORKER_STOPPED


def test_outcome_events_carry_the_attempt_its_error_and_exception() -> None:
    app, jobs = mixed_app()
    heard = recorder(app, "retrying", "dead", "succeeded")
    burst(app)
    retry = next(e for e in heard if e.kind == "retrying" and e.job.task == "flaky")  # type: ignore[union-attr]
    assert isinstance(retry.exception, ConnectionError)
    assert retry.error is not None and retry.error.type == "ConnectionError"
    assert retry.run_at is not None and retry.job is not None and retry.job.attempt == 1
    assert retry.context is not None and retry.context.id == jobs["flaky"].id
    assert retry.duration is not None and retry.duration >= 0
    dead = next(e for e in heard if e.kind == "dead" and e.job.task == "doomed")  # type: ignore[union-attr]
    assert dead.job is not None and dead.job.attempt == 2 and dead.run_at is None
    success = next(e for e in heard if e.kind == "succeeded" and e.job.task == "ok")  # type: ignore[union-attr]
    assert (success.error, success.exception) == (None, None)
    assert success.worker is not None and success.worker.app is app


def test_producers_fire_enqueued_per_created_job_and_workflow_enqueued() -> None:
    app = th.App("memory://")
    task = app.task(name="t")(lambda x=0: x)
    heard = recorder(app, "enqueued", "workflow_enqueued")
    first = task.options(idempotency_key="k").enqueue()
    task.options(idempotency_key="k").enqueue()  # an idempotent hit creates nothing
    app.enqueue_many([task.s(1), task.s(2)])
    handle = app.enqueue(th.chain(task.s(1), task.s()))
    assert [(e.kind, e.job.id if e.job else None) for e in heard[:3]] == [
        ("enqueued", first.id),
        ("enqueued", first.id + 1),
        ("enqueued", first.id + 2),
    ]
    assert len(heard) == 4 and heard[3].kind == "workflow_enqueued"
    assert heard[3].workflow is not None and heard[3].workflow.id == handle.id


def test_a_rescue_and_a_release_are_heard() -> None:
    """A rescue by this worker's maintenance, and a running job given back at a stop."""
    clock = FakeClock()
    app = th.App(driver=MemoryDriver(clock))
    task = app.task(name="resumable")(lambda: None)
    job = task.enqueue()
    app.driver.lease(["default"], 1, 30.0, "a-worker-that-died")
    clock.advance(31)
    heard = recorder(app, "rescued")
    burst(app)
    assert [(e.kind, e.job.id, e.job.state) for e in heard] == [  # type: ignore[union-attr]
        ("rescued", job.id, JobState.RETRYING)
    ]

    app = th.App("memory://")
    entered = threading.Event()
    slow = app.task(name="slow")(lambda: entered.set() or threading.Event().wait(EVENTUALLY))
    stuck = slow.enqueue()
    released = recorder(app, "released")
    with running_worker(app, shutdown_timeout=0) as worker:
        eventually(entered.is_set, what="the slow job started")
    assert [(e.kind, e.job.id) for e in released] == [("released", stuck.id)]  # type: ignore[union-attr]
    assert released[0].worker is worker
    given_back = app.get_job(stuck)  # its attempt given back, due again now
    assert (given_back.state, given_back.attempt) in {
        (JobState.AVAILABLE, 0),
        (JobState.SCHEDULED, 0),
    }


def test_a_failing_subscriber_is_logged_and_harms_nothing(caplog: pytest.LogCaptureFixture) -> None:
    app = th.App("memory://")
    task = app.task(name="t")(lambda: 1)

    @app.on("succeeded")
    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    job = task.enqueue()
    with caplog.at_level(logging.ERROR, logger="taskharbor"):
        burst(app)
    assert app.get_job(job).state is JobState.SUCCEEDED
    assert "event subscriber" in caplog.text and "subscriber bug" in caplog.text


def test_subscribing_checks_kinds_and_unsubscribing_stops_the_calls() -> None:
    app = th.App("memory://")
    task = app.task(name="t")(lambda: 1)
    with pytest.raises(InvalidRequest, match=r"unknown event kind.*'finished'"):
        app.events.subscribe(print, "finished")
    with pytest.raises(InvalidRequest, match="callable"):
        app.events.subscribe("print", "dead")  # type: ignore[arg-type]
    heard: list[Event] = []
    unsubscribe = app.events.subscribe(heard.append, "enqueued")
    task.enqueue()
    unsubscribe()
    task.enqueue()
    assert len(heard) == 1 and not app.events.wants("enqueued")


def test_nobody_listening_builds_no_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unheard events cost nothing: the worker and the app never build one."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("an event was built with nobody listening")

    monkeypatch.setattr("taskharbor.worker.Event", forbidden)
    monkeypatch.setattr("taskharbor.execution.Event", forbidden)
    monkeypatch.setattr("taskharbor.app.Event", forbidden)
    app, jobs = mixed_app()
    app.enqueue(th.chain(app.tasks["ok"].s(), app.tasks["ok"].si()))
    burst(app, **FAST)
    assert app.get_job(jobs["doomed"]).state is JobState.DEAD


def test_the_testing_kit_fires_outcomes_as_a_worker_does() -> None:
    app = th.App("memory://")
    task = app.task(name="t", max_attempts=2)(lambda: 1 / 0)
    heard = recorder(app, *events.OUTCOMES)
    with Harness(app) as harness:
        job = task.enqueue()
        harness.drain(advance_time=True)
    assert [(e.kind, e.job.id, e.job.attempt) for e in heard] == [  # type: ignore[union-attr]
        ("retrying", job.id, 1),
        ("dead", job.id, 2),
    ]
    assert isinstance(heard[0].exception, ZeroDivisionError) and heard[0].run_at is not None
    assert heard[1].context is not None and heard[1].context.attempt == 2
