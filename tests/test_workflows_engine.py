"""Workflows through a real store: the graph build_graph writes, run step by step.

The first part drives every driver by hand (lease, complete, fail) so each
test decides exactly which step finishes when; the second part runs the same
workflows end to end through ``th.App`` and ``th.Worker``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_engine_support import EVENTUALLY

from driver_registry import DriverFactory
from taskharbor.app import App
from taskharbor.canvas import (
    Item,
    Signature,
    WorkflowFailed,
    WorkflowHandle,
    WorkflowNotFinished,
    build_graph,
    chain,
    chord,
    group,
)
from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    WORKFLOW_CANCELLED,
    Clock,
    Completion,
    Driver,
    EnqueueRequest,
    ErrorReport,
    Failure,
    FakeClock,
    InvalidRequest,
    InvalidTransition,
    JobRecord,
    JobState,
    SystemClock,
    WorkflowState,
    dependency_reason,
)
from taskharbor.worker import Worker

Handler = Callable[..., Any]


def s(task: str, *args: Any) -> Signature:
    return Signature(task, args)


def si(task: str, *args: Any) -> Signature:
    return Signature(task, args, immutable=True)


@dataclass
class Store:
    """The part of an App a WorkflowHandle uses."""

    driver: Driver


def enqueue(driver: Driver, workflow: Item) -> WorkflowHandle:
    def request_for(signature: Signature) -> EnqueueRequest:
        return EnqueueRequest(signature.task, signature.args, signature.kwargs, **signature.opts)

    record = driver.enqueue_workflow(build_graph(workflow, request_for))
    return WorkflowHandle(Store(driver), record.id)


def lease_all(driver: Driver) -> list[JobRecord]:
    return driver.lease(["default"], 100, 30.0, "tester")


def finish(driver: Driver, job: JobRecord, handlers: Mapping[str, Handler]) -> None:
    """Run one leased job's handler; an exception fails the job permanently."""
    assert job.lease_token is not None
    try:
        result = handlers[job.task](*job.args, **job.kwargs)
    except Exception as exc:
        report = ErrorReport(type(exc).__name__, str(exc))
        assert driver.fail([Failure(job.id, job.lease_token, report, permanent=True)]) == []
    else:
        assert driver.complete([Completion(job.id, job.lease_token, result)]) == []


def run(driver: Driver, handlers: Mapping[str, Handler]) -> None:
    """Lease and finish jobs until none is available."""
    while jobs := lease_all(driver):
        for job in jobs:
            finish(driver, job, handlers)


HANDLERS: dict[str, Handler] = {
    "add": lambda *numbers: sum(numbers),
    "mul": lambda x, y: x * y,
    "echo": lambda x: x,
    "collect": lambda values: values,
    "total": lambda values: sum(values),
    "boom": lambda *_: 1 // 0,
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def fresh_store(driver_factory: DriverFactory, clock: Clock) -> Driver:
    """A new empty store of the driver under test, its schema created."""
    driver = driver_factory(clock)
    driver.migrate()
    return driver


@pytest.fixture
def driver(driver_factory: DriverFactory, clock: FakeClock) -> Driver:
    return fresh_store(driver_factory, clock)


def test_chain_passes_each_result_to_the_next_step(driver: Driver) -> None:
    handle = enqueue(driver, chain(s("add", 1, 2), s("add", 10), s("mul", 3)))
    run(driver, HANDLERS)
    assert handle.wait(timeout=1) == WorkflowState.SUCCEEDED
    assert handle.result() == (1 + 2 + 10) * 3


def test_chord_callback_gets_member_results_in_header_order(driver: Driver) -> None:
    handle = enqueue(driver, chord([s("echo", n) for n in range(5)], s("collect")))
    members = lease_all(driver)
    assert sorted(job.args[0] for job in members) == [0, 1, 2, 3, 4]
    for job in reversed(members):  # finishing order must not matter
        finish(driver, job, HANDLERS)
    run(driver, HANDLERS)
    assert handle.result() == [0, 1, 2, 3, 4]


def test_group_inside_a_chain_fans_out_and_gathers(driver: Driver) -> None:
    workflow = chain(
        s("add", 1),
        group(s("mul", 2), chain(s("add", 5), s("mul", 10)), si("echo", "fixed")),
        s("collect"),
    )
    handle = enqueue(driver, workflow)
    run(driver, HANDLERS)
    assert handle.result() == [2, 60, "fixed"]


def test_nested_groups_give_nested_lists(driver: Driver) -> None:
    handle = enqueue(driver, group(group(s("echo", 1), s("echo", 2)), s("echo", 3)))
    run(driver, HANDLERS)
    assert handle.result() == [[1, 2], 3]


def test_a_step_run_at_counts_from_enqueue_not_from_release(
    driver: Driver, clock: FakeClock
) -> None:
    later = clock.now() + timedelta(seconds=60)
    handle = enqueue(driver, chain(s("echo", 1), s("add", 2).options(run_at=later)))
    run(driver, HANDLERS)
    assert [step.state for step in handle.status().steps] == [
        JobState.SUCCEEDED,
        JobState.SCHEDULED,
    ]
    clock.set(later)
    driver.promote()
    run(driver, HANDLERS)
    assert handle.result() == 3


def test_a_dead_step_fails_the_workflow_and_cancels_its_dependents(driver: Driver) -> None:
    handle = enqueue(driver, chain(s("echo", 1), s("boom"), s("add", 1), s("add", 2)))
    run(driver, HANDLERS)
    status = handle.status()
    assert status.state == WorkflowState.FAILED
    _, broken, after, last = status.steps
    assert [step.state for step in status.steps] == [
        JobState.SUCCEEDED,
        JobState.DEAD,
        JobState.CANCELLED,
        JobState.CANCELLED,
    ]
    assert after.reason == last.reason == dependency_reason(broken.job_id, JobState.DEAD)
    with pytest.raises(WorkflowFailed) as failed:
        handle.result()
    assert failed.value.step is not None and failed.value.step.id == broken.job_id
    message = str(failed.value)
    assert f"workflow {handle.id} failed" in message
    assert f"step {broken.job_id} (task boom) is dead" in message
    assert "ZeroDivisionError: integer division or modulo by zero" in message


def test_requeue_of_the_dead_step_resumes_the_workflow(driver: Driver) -> None:
    handle = enqueue(driver, chain(s("echo", 4), s("boom"), s("add", 1)))
    run(driver, HANDLERS)
    broken = handle.status().steps[1]
    driver.requeue([broken.job_id])
    status = handle.status()
    assert status.state == WorkflowState.RUNNING
    assert [step.state for step in status.steps][1:] == [JobState.AVAILABLE, JobState.PENDING]
    fixed = HANDLERS | {"boom": lambda x: x * 10}
    run(driver, fixed)
    assert handle.result() == 41


def test_cancelling_the_workflow_cancels_unfinished_steps(driver: Driver) -> None:
    handle = enqueue(driver, chain(s("echo", 1), s("echo"), s("echo")))
    run_one = lease_all(driver)
    finish(driver, run_one[0], HANDLERS)
    assert handle.cancel() == WorkflowState.CANCELLED
    status = handle.status()
    assert status.state == WorkflowState.CANCELLED
    assert [(step.state, step.reason) for step in status.steps] == [
        (JobState.SUCCEEDED, None),
        (JobState.CANCELLED, WORKFLOW_CANCELLED),
        (JobState.CANCELLED, WORKFLOW_CANCELLED),
    ]
    with pytest.raises(WorkflowFailed, match=f"workflow {handle.id} cancelled: step") as failed:
        handle.result()
    assert failed.value.step is not None
    assert failed.value.step.id == status.steps[1].job_id


def test_a_succeeded_workflow_cannot_be_cancelled(driver: Driver) -> None:
    handle = enqueue(driver, s("echo", 1))
    run(driver, HANDLERS)
    with pytest.raises(InvalidTransition):
        handle.cancel()
    assert handle.result() == 1


def test_the_step_cancelled_by_request_is_named_not_its_dependents(driver: Driver) -> None:
    handle = enqueue(driver, chain(s("echo", 1), s("echo"), s("echo")))
    second = handle.status().steps[1]
    driver.cancel([second.job_id])
    with pytest.raises(WorkflowFailed, match=CANCELLED_BY_REQUEST) as failed:
        handle.result()
    assert failed.value.step is not None and failed.value.step.id == second.job_id


def test_status_lists_each_step_in_graph_order(driver: Driver) -> None:
    handle = enqueue(driver, chord([s("echo", 1), s("echo", 2)], s("total")))
    status = handle.status()
    assert status.id == handle.id
    assert status.state == WorkflowState.RUNNING
    assert [(step.task, step.state) for step in status.steps] == [
        ("echo", JobState.AVAILABLE),
        ("echo", JobState.AVAILABLE),
        ("total", JobState.PENDING),
    ]
    assert [step.job_id for step in status.steps] == sorted(step.job_id for step in status.steps)


def test_result_of_a_running_workflow_says_to_wait(driver: Driver) -> None:
    handle = enqueue(driver, s("echo", 1))
    with pytest.raises(WorkflowNotFinished, match=f"workflow {handle.id} is still running"):
        handle.result()


def test_wait_times_out_naming_the_workflow(driver: Driver) -> None:
    handle = enqueue(driver, s("echo", 1))
    with pytest.raises(TimeoutError, match=f"workflow {handle.id} still running after 0.05 s"):
        handle.wait(timeout=0.05)


@pytest.mark.parametrize("timeout", [-1, float("nan"), "5", True])
def test_wait_refuses_a_bad_timeout(driver: Driver, timeout: Any) -> None:
    handle = enqueue(driver, s("echo", 1))
    with pytest.raises(InvalidRequest, match="timeout must be a number of seconds"):
        handle.wait(timeout=timeout)


# -- end to end: th.App, real tasks, th.Worker ------------------------------------


@pytest.fixture
def app(driver_factory: DriverFactory) -> Iterator[App]:
    with App(driver=fresh_store(driver_factory, SystemClock())) as app:
        yield app


def work(app: App) -> None:
    Worker(app, concurrency=5, poll_interval=0.01).run(burst=True, handle_signals=False)


def register_tasks(app: App) -> SimpleNamespace:
    """Small tasks for these tests; ``flaky`` fails while ``broken["on"]`` holds."""
    broken = {"on": True}

    @app.task(name="add")
    def add(*numbers: int) -> int:
        return sum(numbers)

    @app.task(name="mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="late_echo")
    def late_echo(value: Any, pause: float) -> Any:
        time.sleep(pause)
        return value

    @app.task(name="collect")
    def collect(values: list[Any]) -> list[Any]:
        return values

    @app.task(name="flaky", max_attempts=1)
    def flaky(x: int) -> int:
        if broken["on"]:
            raise ValueError(f"cannot handle {x}")
        return x * 100

    return SimpleNamespace(
        add=add, mul=mul, late_echo=late_echo, collect=collect, flaky=flaky, broken=broken
    )


def test_app_runs_a_chain_passing_results(app: App) -> None:
    t = register_tasks(app)
    handle = app.enqueue(chain(t.add.s(1, 2), t.add.s(10), t.mul.s(3)))
    work(app)
    assert handle.wait(timeout=EVENTUALLY) == WorkflowState.SUCCEEDED
    assert handle.result() == 39


def test_app_chord_callback_gets_results_in_header_order(app: App) -> None:
    t = register_tasks(app)
    # Later members finish first: the list must still follow the header.
    header = [t.late_echo.s(n, 0.02 * (4 - n)) for n in range(5)]
    handle = app.enqueue(chord(header, t.collect.s()))
    work(app)
    assert handle.wait(timeout=EVENTUALLY) == WorkflowState.SUCCEEDED
    assert handle.result() == [0, 1, 2, 3, 4]


def test_app_failing_step_fails_the_workflow_and_cancels_dependents(app: App) -> None:
    t = register_tasks(app)
    handle = app.enqueue(chord([chain(t.add.s(1), t.flaky.s()), t.add.s(2)], t.collect.s()))
    work(app)
    assert handle.wait(timeout=EVENTUALLY) == WorkflowState.FAILED
    status = handle.status()
    states = {step.task: step.state for step in status.steps}
    assert states == {
        "add": JobState.SUCCEEDED,
        "flaky": JobState.DEAD,
        "collect": JobState.CANCELLED,
    }
    dead = next(step for step in status.steps if step.task == "flaky")
    assert status.steps[-1].reason == dependency_reason(dead.job_id, JobState.DEAD)
    with pytest.raises(WorkflowFailed, match="ValueError: cannot handle 1"):
        handle.result()


def test_app_requeue_of_the_dead_step_resumes_the_workflow(app: App) -> None:
    t = register_tasks(app)
    handle = app.enqueue(chain(t.add.s(1, 2), t.flaky.s(), t.add.s(4)))
    work(app)
    assert handle.wait(timeout=EVENTUALLY) == WorkflowState.FAILED
    t.broken["on"] = False
    app.requeue(handle.status().steps[1].job_id)
    assert handle.status().state == WorkflowState.RUNNING
    work(app)
    assert handle.wait(timeout=EVENTUALLY) == WorkflowState.SUCCEEDED
    assert handle.result() == 304


def test_app_cancelled_workflow_runs_no_step(app: App) -> None:
    t = register_tasks(app)
    handle = app.enqueue(group(t.add.s(1), chain(t.add.s(2), t.mul.s(3))))
    assert handle.cancel() == WorkflowState.CANCELLED
    work(app)
    status = handle.status()
    assert {step.state for step in status.steps} == {JobState.CANCELLED}
    with pytest.raises(WorkflowFailed, match=WORKFLOW_CANCELLED):
        handle.result()


DOCS = Path(__file__).resolve().parent.parent / "docs" / "workflows.md"


def test_the_first_example_of_the_docs_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example = DOCS.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # th.App() opens ./taskharbor.db
    namespace: dict[str, Any] = {}
    exec(compile(example, str(DOCS), "exec"), namespace)
    namespace["app"].close()
    assert capsys.readouterr().out == "5 words\n"
