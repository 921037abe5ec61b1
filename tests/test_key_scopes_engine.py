"""How long a job holds its idempotency key, from the engine: ``unique_until`` and
``unique_for`` per enqueue and per task, on every driver."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from test_engine_support import burst, fake_app

from driver_registry import DriverFactory
from taskharbor.app import App
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.spec import (
    UNTIL_FINISHED,
    UNTIL_PRUNED,
    Capabilities,
    InvalidRequest,
    JobState,
    KeyScope,
)


def report_app(factory: DriverFactory, **task: Any) -> tuple[App, Any]:
    app, clock = fake_app(factory)

    @app.task(name="report", **task)
    def report(day: str) -> str:
        return f"report {day}"

    return app, clock


def test_unique_until_finished_frees_the_key_once_the_job_succeeded(
    driver_factory: DriverFactory,
) -> None:
    app, _ = report_app(driver_factory)
    once = app.tasks["report"].options(idempotency_key="daily", unique_until="finished")
    first = once.enqueue("mon")
    again = once.enqueue("tue")
    assert (first.created, again.created, again.id, again.args) == (True, False, first.id, ("mon",))
    assert first.key_scope == UNTIL_FINISHED
    burst(app)
    assert app.get_job(first.id).state is JobState.SUCCEEDED
    later = once.enqueue("wed")
    assert later.created and later.id != first.id and later.args == ("wed",)


def test_unique_for_holds_the_key_for_that_long_from_enqueue(
    driver_factory: DriverFactory,
) -> None:
    app, clock = report_app(driver_factory, unique_for=timedelta(minutes=10))
    report = app.tasks["report"]
    first = report.options(idempotency_key="daily").enqueue("mon")
    assert first.key_scope == KeyScope.window(600)
    burst(app)
    clock.advance(599)
    assert report.options(idempotency_key="daily").enqueue("tue").id == first.id
    clock.advance(1)
    assert report.options(idempotency_key="daily").enqueue("wed").created is True
    unkeyed = report.enqueue("thu")  # the task's scope applies to keyed jobs only
    assert (unkeyed.idempotency_key, unkeyed.key_scope) == (None, UNTIL_PRUNED)


def test_an_option_overrides_the_task_s_scope(driver_factory: DriverFactory) -> None:
    app, _ = report_app(driver_factory, unique_until="finished")
    report = app.tasks["report"]
    job = report.options(idempotency_key="a", unique_for=60).enqueue("mon")
    assert job.key_scope == KeyScope.window(60)
    kept = report.options(idempotency_key="b", unique_until="pruned").enqueue("mon")
    assert kept.key_scope == UNTIL_PRUNED


def test_app_enqueue_with_a_key_takes_the_task_s_scope(driver_factory: DriverFactory) -> None:
    app, _ = report_app(driver_factory, unique_until="finished")
    job = app.enqueue(app.tasks["report"].s("mon"), idempotency_key="daily")
    assert (job.idempotency_key, job.key_scope, job.created) == ("daily", UNTIL_FINISHED, True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unique_for": 60, "unique_until": "finished"}, "give unique_for or unique_until"),
        ({"unique_until": "done"}, "unique_until must be one of 'pruned', 'finished'"),
        ({"unique_for": 0}, "unique_for: key window must be positive"),
        ({"unique_for": 400 * 86400}, "unique_for: key window of .* is too long"),
        ({"unique_for": "10m"}, "unique_for: key window must be a number of seconds"),
    ],
)
def test_a_bad_scope_is_refused_naming_it(options: dict[str, Any], message: str) -> None:
    app = App(driver=MemoryDriver())

    @app.task(name="report")
    def report(day: str) -> str:
        return day

    with pytest.raises(InvalidRequest, match=message):
        report.options(idempotency_key="k", **options)
    with pytest.raises(InvalidRequest, match=message):
        app.task(name="other", **options)(lambda: None)
    assert app.list_jobs() == []


def test_a_scope_without_a_key_is_refused() -> None:
    app = App(driver=MemoryDriver())

    @app.task(name="report")
    def report(day: str) -> str:
        return day

    with pytest.raises(InvalidRequest, match="need an idempotency_key"):
        report.options(unique_until="finished").enqueue("mon")
    assert app.list_jobs() == []


def test_a_store_without_key_scopes_refuses_a_scope_but_keeps_the_default() -> None:
    class NoScopes(MemoryDriver):
        capabilities = Capabilities()

    app = App(driver=NoScopes())

    @app.task(name="report")
    def report(day: str) -> str:
        return day

    with pytest.raises(InvalidRequest, match="lacks the key_scopes capability"):
        report.options(idempotency_key="k", unique_for=60).enqueue("mon")
    assert app.list_jobs() == []
    assert report.options(idempotency_key="k").enqueue("mon").created is True
