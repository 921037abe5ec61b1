"""A workflow's failure callback through ``th.App`` and ``th.Worker``, on every driver.

``workflow.on_failure(alert.s(...))``: the callback runs once when a step ends
dead, with the failed step described in front of its arguments; it is cancelled
when the workflow succeeds; bad callbacks are refused at enqueue.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_engine_support import EVENTUALLY, app_declaring, burst

import taskharbor as th
from driver_registry import DriverFactory
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.spec import (
    WORKFLOW_SUCCEEDED,
    Capabilities,
    InvalidRequest,
    JobState,
    WorkflowState,
)


@pytest.fixture
def app(driver_factory: DriverFactory) -> Iterator[th.App]:
    with app_declaring(driver_factory, "failure_callbacks") as app:
        yield app


def tasks(app: th.App) -> tuple[Any, Any, Any, list[tuple[th.StepFailure, str]]]:
    """``double``, ``broken`` (dies at once) and ``alert`` (records what it is given)."""
    alerts: list[tuple[th.StepFailure, str]] = []

    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    @app.task(name="broken", max_attempts=1)
    def broken(x: int) -> int:
        raise ValueError(f"no {x}")

    @app.task(name="alert")
    def alert(failure: th.StepFailure, channel: str) -> str:
        alerts.append((failure, channel))
        return f"{channel}: {failure['task']} failed"

    return double, broken, alert, alerts


def test_the_callback_runs_once_with_the_failed_step(app: th.App) -> None:
    double, broken, alert, alerts = tasks(app)
    workflow = th.chain(double.s(1), th.group(broken.s(), broken.s()), double.si(5))
    handle = app.enqueue(workflow.on_failure(alert.s("ops")))
    burst(app, concurrency=4)
    assert handle.wait(timeout=EVENTUALLY) is WorkflowState.FAILED
    status = handle.status()
    assert status.on_failure is not None and status.on_failure.state is JobState.SUCCEEDED
    assert [step.task for step in status.steps] == ["double", "broken", "broken", "double"]
    ((failure, channel),) = alerts
    dead = [step.job_id for step in status.steps if step.state is JobState.DEAD]
    assert channel == "ops" and failure["job_id"] in dead
    assert failure == {
        "workflow_id": handle.id,
        "job_id": failure["job_id"],
        "task": "broken",
        "attempt": 1,
        "type": "ValueError",
        "message": "no 2",
    }
    assert app.get_job(status.on_failure.job_id).result == "ops: broken failed"


def test_a_workflow_that_succeeds_cancels_its_callback(app: th.App) -> None:
    double, _, alert, alerts = tasks(app)
    handle = app.enqueue(
        th.chord([double.s(1), double.s(2)], double.si(3)).on_failure(alert.s("x"))
    )
    burst(app, concurrency=4)
    assert handle.wait(timeout=EVENTUALLY) is WorkflowState.SUCCEEDED
    assert handle.result() == 6
    status = handle.status()
    assert status.on_failure is not None
    assert (status.on_failure.state, status.on_failure.reason) == (
        JobState.CANCELLED,
        WORKFLOW_SUCCEEDED,
    )
    assert alerts == []


def test_bad_callbacks_are_refused_at_enqueue(app: th.App) -> None:
    double, _, alert, _ = tasks(app)
    workflow = th.chain(double.s(1), double.s())
    with pytest.raises(InvalidRequest, match="outermost"):
        app.enqueue(th.chain(workflow.on_failure(alert.s("x")), double.s()))
    with pytest.raises(InvalidRequest, match=r"task\.s\(\.\.\.\)"):
        workflow.on_failure(alert.si({}, "x"))
    with pytest.raises(InvalidRequest, match="already has an on_failure"):
        workflow.on_failure(alert.s("x")).on_failure(alert.s("y"))
    with pytest.raises(InvalidRequest, match="alert"):
        app.enqueue(workflow.on_failure(alert.s()))  # channel missing
    with pytest.raises(InvalidRequest, match="signature"):
        workflow.on_failure(alert)  # type: ignore[arg-type]
    assert app.list_jobs() == []


class StoreWithoutCallbacks(MemoryDriver):
    capabilities = Capabilities(schedules=True)


def test_a_store_without_the_capability_refuses_the_workflow() -> None:
    with th.App(driver=StoreWithoutCallbacks()) as app:
        double, _, alert, _ = tasks(app)
        with pytest.raises(InvalidRequest, match="failure_callbacks"):
            app.enqueue(th.chain(double.s(1), double.s()).on_failure(alert.s("x")))
        assert app.list_jobs() == []
