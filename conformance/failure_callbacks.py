"""Rules of a workflow's failure callback (capability ``failure_callbacks``).

The callback is a job of the workflow outside its steps: stored ``pending``,
released with the failure in front of its args by the call in which the
workflow becomes ``failed``, cancelled when the workflow succeeds or is
cancelled; see "Failure callbacks" in ``spec/spi.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    LEASE_EXPIRED_MESSAGE,
    LEASE_EXPIRED_TYPE,
    WORKFLOW_CANCELLED,
    WORKFLOW_SUCCEEDED,
    EnqueueRequest,
    Failure,
    FlowLimits,
    JobNotFound,
    JobState,
    StepSpec,
    WorkflowGraph,
    WorkflowNotFound,
    WorkflowRecord,
    WorkflowState,
    step_failure,
)

from .harness import BOOM, Harbor, HarborFixture, requires
from .workflows import step


def with_callback(
    harbor: Harbor, *steps: StepSpec, result: Any = 0, **callback: Any
) -> WorkflowRecord:
    """A workflow of ``steps`` whose failure callback runs in the queue ``alert``."""
    request = EnqueueRequest("alert", queue="alert", args=("ops",), **callback)
    graph = WorkflowGraph(steps, result=result, on_failure=request)
    return harbor.driver.enqueue_workflow(graph)


def callback_of(harbor: Harbor, record: WorkflowRecord) -> Any:
    assert record.on_failure is not None, f"workflow {record.id} has no failure callback"
    return harbor.get(record.on_failure)


class WorkflowFailureCallbackRules(HarborFixture):
    @requires("failure_callbacks")
    def test_the_callback_is_stored_pending_outside_the_steps(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"), step("b", after=(0,)), result=1)
        assert record.on_failure == record.steps[-1] + 1
        assert record.on_failure not in record.steps
        assert harbor.driver.get_workflow(record.id).on_failure == record.on_failure
        callback = callback_of(harbor, record)
        assert (callback.state, callback.workflow_id) == (JobState.PENDING, record.id)
        assert (callback.args, callback.depends_on, callback.task) == (("ops",), (), "alert")

    @requires("failure_callbacks")
    def test_a_dead_step_releases_the_callback_with_its_failure(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"), step("b", after=(0,)), result=1)
        died_at = harbor.advance(5)
        harbor.fail(harbor.lease_job(harbor.get(record.steps[0])), permanent=True)
        dead = harbor.get(record.steps[0])
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.FAILED
        callback = callback_of(harbor, record)
        assert (callback.state, callback.run_at) == (JobState.AVAILABLE, died_at)
        assert callback.args == (step_failure(record.id, dead), "ops")
        assert callback.args[0] == {
            "workflow_id": record.id,
            "job_id": dead.id,
            "task": "a",
            "attempt": 1,
            "type": BOOM.type,
            "message": BOOM.message,
        }

    @requires("failure_callbacks")
    def test_a_step_dead_at_rescue_releases_the_callback(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a", max_attempts=1))
        harbor.lease_job(harbor.get(record.steps[0]))
        harbor.advance(3600)
        assert harbor.driver.rescue() == [record.steps[0]]
        failure = callback_of(harbor, record).args[0]
        assert (failure["type"], failure["message"]) == (LEASE_EXPIRED_TYPE, LEASE_EXPIRED_MESSAGE)
        assert callback_of(harbor, record).state is JobState.AVAILABLE

    @requires("failure_callbacks")
    def test_the_callback_hears_of_the_first_step_dead_in_a_call(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"), step("b"), result=[0, 1])
        a = harbor.lease_job(harbor.get(record.steps[0]))
        b = harbor.lease_job(harbor.get(record.steps[1]))
        failures = [Failure(job.id, str(job.lease_token), BOOM, permanent=True) for job in (b, a)]
        assert harbor.driver.fail(failures) == []
        assert callback_of(harbor, record).args[0]["job_id"] == b.id

    @requires("failure_callbacks")
    def test_a_later_dead_step_does_not_release_the_callback_again(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"), step("b"), result=[0, 1])
        a, b = harbor.driver.get(list(record.steps))
        harbor.fail(harbor.lease_job(a), permanent=True)
        released = callback_of(harbor, record)
        harbor.advance(1)
        harbor.fail(harbor.lease_job(b), permanent=True)
        assert callback_of(harbor, record) == released

    @requires("failure_callbacks")
    def test_a_succeeded_workflow_cancels_its_callback(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"))
        finished_at = harbor.advance(2)
        harbor.finish(harbor.get(record.steps[0]))
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.SUCCEEDED
        callback = callback_of(harbor, record)
        assert (callback.state, callback.reason) == (JobState.CANCELLED, WORKFLOW_SUCCEEDED)
        assert (callback.finished_at, callback.args) == (finished_at, ("ops",))

    @requires("failure_callbacks")
    def test_cancel_workflow_cancels_the_callback(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"), step("b"), result=[0, 1])
        harbor.driver.cancel_workflow(record.id)
        callback = callback_of(harbor, record)
        assert (callback.state, callback.reason) == (JobState.CANCELLED, WORKFLOW_CANCELLED)

    @requires("failure_callbacks")
    def test_a_workflow_failing_after_it_was_cancelled_keeps_its_callback_cancelled(
        self, harbor: Harbor
    ) -> None:
        record = with_callback(harbor, step("a"), step("b"), result=[0, 1])
        a, b = harbor.driver.get(list(record.steps))
        running = harbor.lease_job(a)
        cancelled_at = harbor.advance(1)
        harbor.driver.cancel([b.id])
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.CANCELLED
        callback = callback_of(harbor, record)
        assert (callback.state, callback.reason) == (JobState.CANCELLED, WORKFLOW_CANCELLED)
        assert callback.finished_at == cancelled_at
        harbor.advance(1)
        harbor.fail(running, permanent=True)
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.FAILED
        assert callback_of(harbor, record) == callback

    @requires("failure_callbacks")
    def test_the_callback_moves_by_the_state_a_call_leaves_its_workflow_in(
        self, harbor: Harbor
    ) -> None:
        record = with_callback(harbor, step("a"), step("b"), result=[0, 1])
        a, _ = harbor.driver.get(list(record.steps))
        assert record.on_failure is not None
        harbor.driver.cancel([a.id, record.on_failure])  # a's cancel cancels the workflow first
        callback = callback_of(harbor, record)
        assert (callback.state, callback.reason) == (JobState.CANCELLED, CANCELLED_BY_REQUEST)
        other = with_callback(harbor, step("c"), step("d"), result=[0, 1])
        asked = harbor.lease_job(harbor.get(other.steps[0]))
        dying = harbor.lease_job(harbor.get(other.steps[1]))
        harbor.driver.cancel([asked.id])  # running: only asked to stop
        reports = [
            Failure(job.id, str(job.lease_token), BOOM, permanent=True) for job in (asked, dying)
        ]
        assert harbor.driver.fail(reports) == []  # cancelled, then dead: the call ends it failed
        assert harbor.driver.get_workflow(other.id).state is WorkflowState.FAILED
        released = callback_of(harbor, other)
        assert (released.state, released.args[0]["job_id"]) == (JobState.AVAILABLE, dying.id)

    @requires("failure_callbacks")
    def test_resuming_a_cancelled_workflow_puts_its_callback_back(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"), step("b", after=(0,)), result=1)
        a = harbor.get(record.steps[0])
        harbor.driver.cancel([a.id])
        assert callback_of(harbor, record).state is JobState.CANCELLED
        harbor.driver.requeue([a.id])
        callback = callback_of(harbor, record)
        assert (callback.state, callback.reason, callback.args) == (
            JobState.PENDING,
            None,
            ("ops",),
        )
        harbor.fail(harbor.lease_job(harbor.get(a.id)), permanent=True)
        assert callback_of(harbor, record).args[0]["job_id"] == a.id

    @requires("failure_callbacks")
    def test_the_callback_ending_does_not_change_the_workflow(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"), max_attempts=1)
        harbor.fail(harbor.lease_job(harbor.get(record.steps[0])), permanent=True)
        failed = harbor.driver.get_workflow(record.id)
        harbor.advance(1)
        harbor.fail(harbor.lease_job(callback_of(harbor, record)))
        assert callback_of(harbor, record).state is JobState.DEAD
        assert harbor.driver.get_workflow(record.id) == failed

    @requires("failure_callbacks")
    def test_requeueing_the_dead_step_leaves_a_released_callback_alone(
        self, harbor: Harbor
    ) -> None:
        record = with_callback(harbor, step("a", max_attempts=1), step("b", after=(0,)), result=1)
        a = harbor.get(record.steps[0])
        harbor.fail(harbor.lease_job(a))
        harbor.advance(1)
        harbor.finish(callback_of(harbor, record), "alerted")
        done = callback_of(harbor, record)
        harbor.driver.requeue([a.id])
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.RUNNING
        harbor.finish(a)
        harbor.finish(harbor.get(record.steps[1]))
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.SUCCEEDED
        assert callback_of(harbor, record) == done

    @requires("failure_callbacks")
    def test_a_requeued_dead_callback_keeps_its_failure(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"), max_attempts=1)
        harbor.fail(harbor.lease_job(harbor.get(record.steps[0])), permanent=True)
        released = callback_of(harbor, record)
        harbor.fail(harbor.lease_job(released))
        (requeued,) = harbor.driver.requeue([released.id])
        assert (requeued.state, requeued.args) == (JobState.AVAILABLE, released.args)
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.FAILED

    @requires("failure_callbacks")
    def test_a_released_callback_waits_for_its_run_at(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"), run_at=harbor.later(60))
        harbor.fail(harbor.lease_job(harbor.get(record.steps[0])), permanent=True)
        callback = callback_of(harbor, record)
        assert (callback.state, callback.run_at) == (JobState.SCHEDULED, harbor.later(60))

    @requires("failure_callbacks", "flow_control")
    def test_a_released_callback_obeys_its_flow_limits(self, harbor: Harbor) -> None:
        flow = FlowLimits(concurrency=1, key="ops", key_concurrency=1)
        record = with_callback(harbor, step("a"), flow=flow)
        assert callback_of(harbor, record).flow == flow
        holder = harbor.running("alert", queue="pager", flow=flow)
        harbor.fail(harbor.lease_job(harbor.get(record.steps[0])), permanent=True)
        assert callback_of(harbor, record).state is JobState.AVAILABLE
        assert harbor.lease(["alert"], limit=10) == []  # its task's and key's slot are taken
        harbor.complete(holder)
        assert [job.id for job in harbor.lease(["alert"], limit=10)] == [record.on_failure]

    @requires("failure_callbacks")
    def test_prune_deletes_the_callback_with_its_workflow(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"))
        harbor.finish(harbor.get(record.steps[0]))
        assert harbor.driver.prune(harbor.advance(1)) == 2
        with pytest.raises(WorkflowNotFound):
            harbor.driver.get_workflow(record.id)
        with pytest.raises(JobNotFound):
            callback_of(harbor, record)

    @requires("failure_callbacks")
    def test_a_dead_step_cancelled_leaves_the_released_callback_as_it_is(
        self, harbor: Harbor
    ) -> None:
        record = with_callback(harbor, step("a"), step("b"))
        a, b = record.steps
        harbor.fail(harbor.lease_job(harbor.get(a)), permanent=True)
        released = callback_of(harbor, record)
        failed = harbor.driver.get_workflow(record.id)
        harbor.advance(1)
        harbor.driver.cancel([a])
        harbor.finish(harbor.get(b))
        assert callback_of(harbor, record) == released  # told once, never taken back
        assert harbor.driver.get_workflow(record.id) == failed

    @requires("failure_callbacks")
    def test_a_dead_callback_cancelled_leaves_its_workflow_failed(self, harbor: Harbor) -> None:
        record = with_callback(harbor, step("a"))
        harbor.fail(harbor.lease_job(harbor.get(record.steps[0])), permanent=True)
        harbor.fail(harbor.lease_job(callback_of(harbor, record)), permanent=True)
        dead = callback_of(harbor, record)
        failed = harbor.driver.get_workflow(record.id)
        harbor.advance(1)
        (cancelled,) = harbor.driver.cancel([dead.id])
        assert cancelled.state is JobState.CANCELLED
        assert (cancelled.args, cancelled.errors) == (dead.args, dead.errors)  # its failure kept
        assert harbor.driver.get_workflow(record.id) == failed
