"""Partial chords through ``th.App`` and ``th.Worker``, on every driver.

``th.chord(members, callback.s(), partial=True)``: the callback runs once every
member has ended, with the results of those that succeeded (header order) and a
list of ``th.MemberFailure`` for the others; the workflow ends as its callback
does, and its failure callback is not called for a member it tolerated.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_engine_support import EVENTUALLY, app_declaring, burst

import taskharbor as th
from driver_registry import DriverFactory
from taskharbor.canvas import build_graph
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.spec import (
    WORKFLOW_SUCCEEDED,
    Capabilities,
    EnqueueRequest,
    InvalidRequest,
    JobState,
    WorkflowState,
)


@pytest.fixture
def app(driver_factory: DriverFactory) -> Iterator[th.App]:
    with app_declaring(driver_factory, "partial_chords") as app:
        yield app


Seen = list[tuple[list[Any], list[th.MemberFailure]]]


def tasks(app: th.App) -> tuple[Any, Any, Any, Seen]:
    """``square``, ``fetch`` (dies at once for a negative number) and ``report``
    (records what it is given, returns the sum and the failed positions)."""
    seen: Seen = []

    @app.task(name="square")
    def square(x: int) -> int:
        return x * x

    @app.task(name="fetch", max_attempts=1)
    def fetch(x: int) -> int:
        if x < 0:
            raise ValueError(f"no {x}")
        return x

    @app.task(name="report")
    def report(results: list[Any], failures: list[th.MemberFailure], label: str) -> str:
        seen.append((results, failures))
        return f"{label}: {sum(results)} ok, failed {[f['index'] for f in failures]}"

    return square, fetch, report, seen


def test_the_callback_runs_over_the_members_that_succeeded(app: th.App) -> None:
    _, fetch, report, seen = tasks(app)
    members = [fetch.s(1), fetch.s(-2), fetch.s(3), fetch.s(-4)]
    handle = app.enqueue(th.chord(members, report.s("total"), partial=True))
    burst(app, concurrency=4)
    assert handle.wait(timeout=EVENTUALLY) is WorkflowState.SUCCEEDED
    assert handle.result() == "total: 4 ok, failed [1, 3]"
    ((results, failures),) = seen
    assert results == [1, 3]
    status = handle.status()
    assert [step.state for step in status.steps] == [
        JobState.SUCCEEDED,
        JobState.DEAD,
        JobState.SUCCEEDED,
        JobState.DEAD,
        JobState.SUCCEEDED,
    ]
    assert failures[0] == {
        "index": 1,
        "job_id": status.steps[1].job_id,
        "task": "fetch",
        "state": "dead",
        "attempt": 1,
        "type": "ValueError",
        "message": "no -2",
        "reason": None,
    }


def test_a_chain_member_that_breaks_and_a_tolerated_death_call_no_failure_callback(
    app: th.App,
) -> None:
    square, fetch, report, seen = tasks(app)
    members = [th.chain(fetch.s(-1), square.s()), square.s(2)]
    workflow = th.chord(members, report.s("x"), partial=True).on_failure(report.s([], "alert"))
    handle = app.enqueue(workflow)
    burst(app, concurrency=4)
    assert handle.wait(timeout=EVENTUALLY) is WorkflowState.SUCCEEDED
    ((results, (failure,)),) = seen
    assert results == [4]
    assert (failure["index"], failure["task"], failure["state"]) == (0, "square", "cancelled")
    status = handle.status()
    assert status.on_failure is not None
    assert (status.on_failure.state, status.on_failure.reason) == (
        JobState.CANCELLED,
        WORKFLOW_SUCCEEDED,
    )


def test_a_dead_callback_fails_the_workflow_and_is_named(app: th.App) -> None:
    _, fetch, _, _ = tasks(app)
    handle = app.enqueue(th.chord([fetch.s(-1), fetch.s(2)], fetch.si(-9), partial=True))
    burst(app, concurrency=4)
    assert handle.wait(timeout=EVENTUALLY) is WorkflowState.FAILED
    with pytest.raises(th.WorkflowFailed, match="no -9") as failed:
        handle.result()
    assert failed.value.step is not None and failed.value.step.args == (-9,)


def test_a_callback_that_cannot_take_the_failures_is_refused(app: th.App) -> None:
    square, _, _, _ = tasks(app)
    with pytest.raises(InvalidRequest, match="square"):
        app.enqueue(th.chord([square.s(1)], square.s(), partial=True))
    with pytest.raises(InvalidRequest, match="partial must be True or False"):
        th.chord([square.s(1)], square.s(), partial="yes")  # type: ignore[arg-type]
    assert app.list_jobs() == []


class StoreWithoutPartialChords(MemoryDriver):
    capabilities = Capabilities(schedules=True)


def test_a_store_without_the_capability_refuses_a_partial_chord() -> None:
    with th.App(driver=StoreWithoutPartialChords()) as app:
        square, _, report, _ = tasks(app)
        with pytest.raises(InvalidRequest, match="partial_chords"):
            app.enqueue(th.chord([square.s(1)], report.s("x"), partial=True))
        assert app.list_jobs() == []


def test_only_the_steps_that_wait_for_the_header_are_partial(app: th.App) -> None:
    square, _, report, _ = tasks(app)
    callback = th.chain(th.group(report.s("a"), report.s("b")), square.si(1))
    inner = th.chord([square.s(2)], report.s("c"), partial=True)
    graph = build_graph(
        th.chord([square.s(1), inner], callback, partial=True),
        lambda signature: EnqueueRequest(signature.task, args=tuple(signature.args)),
    )
    assert [(step.request.task, step.partial) for step in graph.steps] == [
        ("square", False),
        ("square", False),
        ("report", True),
        ("report", True),
        ("report", True),
        ("square", False),
    ]
