"""The spec's functions for partial steps: which steps are tolerated, what a partial
step is given, and the graphs refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from taskharbor.spec import (
    EnqueueRequest,
    ErrorInfo,
    InvalidRequest,
    JobRecord,
    JobState,
    StepSpec,
    WorkflowGraph,
    member_failure,
    partial_input,
    tolerated_steps,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def spec(*after: int, partial: bool = False) -> StepSpec:
    return StepSpec(EnqueueRequest("t"), after=after, partial=partial)


def job(job_id: int, state: JobState, result: object = None) -> JobRecord:
    errors = (ErrorInfo(1, NOW, "Boom", "no"),) if state is JobState.DEAD else ()
    return JobRecord(
        id=job_id,
        task="t",
        queue="default",
        state=state,
        args=(),
        kwargs={},
        priority=0,
        run_at=NOW,
        attempt=1,
        max_attempts=1,
        created_at=NOW,
        result=result,
        errors=errors,
    )


def test_members_and_the_chains_leading_to_them_are_tolerated() -> None:
    # 0 -> 1 -> 3 (partial), 2 -> 3, 3 -> 4
    steps = [spec(), spec(0), spec(), spec(1, 2, partial=True), spec(3)]
    assert tolerated_steps(steps) == {0, 1, 2}


def test_a_step_feeding_a_plain_step_too_is_not_tolerated() -> None:
    steps = [spec(), spec(0, partial=True), spec(0)]
    assert tolerated_steps(steps) == frozenset()


def test_leaves_and_plain_graphs_tolerate_nothing() -> None:
    assert tolerated_steps([spec(), spec(0), spec(0)]) == frozenset()


def test_the_input_leaves_out_failures_and_keeps_nesting() -> None:
    steps = {
        1: job(1, JobState.SUCCEEDED, "a"),
        2: job(2, JobState.DEAD),
        3: job(3, JobState.SUCCEEDED, None),
        4: job(4, JobState.CANCELLED),
    }
    results, failures = partial_input([1, [2, 3], 4], steps)
    assert results == ["a", [None]]
    assert failures == [member_failure(1, steps[2]), member_failure(3, steps[4])]
    assert failures[0] == {
        "index": 1,
        "job_id": 2,
        "task": "t",
        "state": "dead",
        "attempt": 1,
        "type": "Boom",
        "message": "no",
        "reason": None,
    }


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (StepSpec(EnqueueRequest("t"), partial=True), "partial but waits for no step"),
        (StepSpec(EnqueueRequest("t"), after=(0,), input=0, partial=True), "list of refs"),
        (StepSpec(EnqueueRequest("t"), after=(0,), partial=1), "partial must be a bool"),  # type: ignore[arg-type]
    ],
)
def test_bad_partial_steps_are_refused(step: StepSpec, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        WorkflowGraph((spec(), step), result=1)
