"""The transition tables derived from the spec classes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from statemachine.exceptions import TransitionNotAllowed

from taskharbor.spec import (
    EVENT_EFFECTS,
    FLOW_GUARDS,
    JOB,
    JOB_GUARDS,
    WORKFLOW,
    InvalidTransition,
    JobEvent,
    JobRecord,
    JobState,
    WorkflowState,
    derive_workflow_state,
    field_effects,
)
from taskharbor.spec.lifecycle import JobLifecycle
from taskharbor.spec.table import QUEUED_JOB_STATES


def test_every_persisted_state_is_a_job_state() -> None:
    assert set(JOB.states) - {"new"} == {state.value for state in JobState}


def test_fail_guards_decide_between_cancelled_dead_and_retrying() -> None:
    running = JobState.RUNNING
    assert JOB.resolve(JobEvent.FAIL, running, {}) == JobState.RETRYING
    assert JOB.resolve(JobEvent.FAIL, running, {"attempts_exhausted": True}) == JobState.DEAD
    assert JOB.resolve(JobEvent.FAIL, running, {"permanent": True}) == JobState.DEAD
    both = {"cancel_requested": True, "permanent": True}
    assert JOB.resolve(JobEvent.FAIL, running, both) == JobState.CANCELLED


def test_lease_expired_counts_the_attempt() -> None:
    running = JobState.RUNNING
    assert JOB.resolve(JobEvent.LEASE_EXPIRED, running, {}) == JobState.RETRYING
    exhausted = {"attempts_exhausted": True}
    assert JOB.resolve(JobEvent.LEASE_EXPIRED, running, exhausted) == JobState.DEAD


def test_invalid_transition_names_subject_event_and_states() -> None:
    with pytest.raises(InvalidTransition) as info:
        JOB.resolve(JobEvent.LEASE, JobState.SUCCEEDED, subject=42)
    message = str(info.value)
    assert "job 42" in message and "succeeded" in message and "available" in message


def test_cancel_applies_to_queued_states_and_dead() -> None:
    queued = {JobState.PENDING, JobState.SCHEDULED, JobState.AVAILABLE, JobState.RETRYING}
    assert JOB.sources(JobEvent.CANCEL) == {*queued, JobState.DEAD}
    assert queued == QUEUED_JOB_STATES


def test_requeue_leaves_dead_and_cancelled() -> None:
    assert JOB.sources(JobEvent.REQUEUE) == {JobState.DEAD, JobState.CANCELLED}
    assert JOB.final_states == {JobState.SUCCEEDED}


def test_workflow_transitions() -> None:
    assert WORKFLOW.event_for(WorkflowState.RUNNING, WorkflowState.FAILED) == "fail"
    assert WORKFLOW.event_for(WorkflowState.FAILED, WorkflowState.RUNNING) == "resume"
    with pytest.raises(InvalidTransition):
        WORKFLOW.event_for(WorkflowState.SUCCEEDED, WorkflowState.RUNNING)


@pytest.mark.parametrize(
    "facts", [{}, {"attempts_exhausted": True}, {"cancel_requested": True}, {"permanent": True}]
)
def test_table_agrees_with_a_machine_instance(facts: dict[str, bool]) -> None:
    """The derived table and python-statemachine itself pick the same targets."""

    class Probe(JobLifecycle):  # type: ignore[misc]
        def waits_on_dependencies(self) -> bool:
            return False

        def run_at_in_future(self) -> bool:
            return False

        def cancel_requested(self) -> bool:
            return bool(facts.get("cancel_requested"))

        def permanent(self) -> bool:
            return bool(facts.get("permanent"))

        def attempts_exhausted(self) -> bool:
            return bool(facts.get("attempts_exhausted"))

        def task_at_limit(self) -> bool:
            return False

        def key_at_limit(self) -> bool:
            return False

        def sequence_waits(self) -> bool:
            return False

        def rate_exhausted(self) -> bool:
            return False

    machine = Probe()
    machine.send("enqueue")
    machine.send("lease")
    machine.send("fail")
    expected = JOB.resolve(JobEvent.FAIL, JobState.RUNNING, facts)
    assert machine.current_state_value == expected


@pytest.mark.parametrize("held_by", [None, *FLOW_GUARDS])
def test_flow_guards_hold_a_lease_back_in_the_table_and_the_machine(held_by: str | None) -> None:
    """``lease`` is taken only while none of its ``unless`` guards holds."""

    def holds(name: str) -> Callable[[object], bool]:
        return lambda self: name == held_by

    probe = type(
        "FlowProbe",
        (JobLifecycle,),
        {name: holds(name) for name in JOB_GUARDS},
    )
    machine = probe()
    machine.send("enqueue")
    facts = {name: name == held_by for name in FLOW_GUARDS}
    expected = JOB.permits(JobEvent.LEASE, JobState.AVAILABLE, facts)
    if held_by is None:
        machine.send("lease")
        assert machine.current_state_value == expected == JobState.RUNNING
    else:
        with pytest.raises(TransitionNotAllowed):
            machine.send("lease")
        assert expected is None
        with pytest.raises(InvalidTransition):
            JOB.resolve(JobEvent.LEASE, JobState.AVAILABLE, facts)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ({JobState.DEAD, JobState.CANCELLED, JobState.RUNNING}, WorkflowState.FAILED),
        ({JobState.CANCELLED, JobState.SUCCEEDED}, WorkflowState.CANCELLED),
        ({JobState.SUCCEEDED}, WorkflowState.SUCCEEDED),
        ({JobState.SUCCEEDED, JobState.PENDING}, WorkflowState.RUNNING),
    ],
)
def test_workflow_state_is_derived_dead_first_then_cancelled(
    steps: set[JobState], expected: WorkflowState
) -> None:
    assert derive_workflow_state(steps) == expected


def test_a_failed_workflow_whose_dead_steps_were_cancelled_stays_failed() -> None:
    steps = {JobState.CANCELLED, JobState.SUCCEEDED, JobState.RUNNING}
    assert derive_workflow_state(steps, WorkflowState.FAILED) is WorkflowState.FAILED
    assert derive_workflow_state(steps, WorkflowState.RUNNING) is WorkflowState.CANCELLED
    requeued = {JobState.AVAILABLE, JobState.PENDING}
    assert derive_workflow_state(requeued, WorkflowState.FAILED) is WorkflowState.RUNNING


def test_every_event_on_a_stored_job_has_published_field_effects() -> None:
    assert set(EVENT_EFFECTS) == set(JobEvent) - {JobEvent.ENQUEUE}
    names = {f.name for f in dataclasses.fields(JobRecord)}
    for effects in EVENT_EFFECTS.values():
        assert {effect.field for effect in effects} <= names
    leaving = field_effects(JobEvent.SUCCEED, JobState.RUNNING, JobState.SUCCEEDED)
    assert leaving["lease_token"] == leaving["leased_by"] == "clear"
    assert (leaving["finished_at"], leaving["result"], leaving["attempt"]) == (
        "now",
        "given",
        "keep",
    )
