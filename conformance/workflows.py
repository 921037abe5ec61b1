"""Rules of workflows: steps, release with results, cascades, requeue, state, pruning.

Each step gets its own queue (named after its task) so a test can lease
exactly the step it means.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    WORKFLOW_CANCELLED,
    EnqueueRequest,
    InvalidTransition,
    JobNotFound,
    JobRecord,
    JobState,
    ResultRef,
    SnoozeRequest,
    StepSpec,
    WorkflowGraph,
    WorkflowNotFound,
    WorkflowRecord,
    WorkflowState,
    dependency_reason,
)
from taskharbor.spec.records import map_ref

from .harness import Harbor, HarborFixture


def step(
    task: str, *, after: tuple[int, ...] = (), input: ResultRef | None = None, **fields: Any
) -> StepSpec:
    """A step whose job runs in a queue of its own, named after its task."""
    return StepSpec(EnqueueRequest(task, queue=task, **fields), after=after, input=input)


def workflow(harbor: Harbor, *steps: StepSpec, result: ResultRef = 0) -> WorkflowRecord:
    return harbor.driver.enqueue_workflow(WorkflowGraph(steps, result=result))


def chord(harbor: Harbor) -> WorkflowRecord:
    """Three members and a callback taking their results as a list, in header order."""
    return workflow(
        harbor,
        step("m0"),
        step("m1"),
        step("m2"),
        step("callback", after=(0, 1, 2), input=[0, 1, 2], args=("extra",)),
        result=3,
    )


def states(harbor: Harbor, record: WorkflowRecord) -> list[JobState]:
    return [job.state for job in harbor.driver.get(list(record.steps))]


def ended(harbor: Harbor, job_id: int) -> tuple[JobState, str | None]:
    """A job's state and reason."""
    stored = harbor.get(job_id)
    return stored.state, stored.reason


class WorkflowShapeRules(HarborFixture):
    def test_enqueue_workflow_stores_the_steps_in_order(self, harbor: Harbor) -> None:
        graph = WorkflowGraph(
            (step("a"), step("b", priority=3), step("c", after=(0, 1), input=[0, 1])),
            result=[2, 0],
            name="nightly",
        )
        record = harbor.driver.enqueue_workflow(graph)
        assert record.id > 0
        assert (record.state, record.name) == (WorkflowState.RUNNING, "nightly")
        assert (record.created_at, record.finished_at) == (harbor.now(), None)
        a, b, c = harbor.driver.get(list(record.steps))
        assert [a.task, b.task, c.task] == ["a", "b", "c"]
        assert a.id < b.id < c.id
        assert record.result == [c.id, a.id]
        assert [a.state, b.state, c.state] == [
            JobState.AVAILABLE,
            JobState.AVAILABLE,
            JobState.PENDING,
        ]
        assert {a.workflow_id, b.workflow_id, c.workflow_id} == {record.id}
        assert (a.depends_on, c.depends_on) == ((), (a.id, b.id))
        assert (b.priority, c.args, c.created_at) == (3, (), harbor.now())
        assert harbor.driver.get_workflow(record.id) == record

    def test_workflow_ids_are_positive_and_increase_in_enqueue_order(self, harbor: Harbor) -> None:
        first = workflow(harbor, step("a"))
        second = workflow(harbor, step("b"))
        assert 0 < first.id < second.id
        assert first.steps[0] < second.steps[0]

    def test_a_root_step_due_later_is_scheduled(self, harbor: Harbor) -> None:
        run_at = harbor.later(60)
        record = workflow(harbor, step("a", run_at=run_at))
        (job,) = harbor.driver.get(list(record.steps))
        assert (job.state, job.run_at) == (JobState.SCHEDULED, run_at)

    def test_a_released_step_is_due_now_unless_its_run_at_is_later(self, harbor: Harbor) -> None:
        future = harbor.later(3600)
        record = workflow(
            harbor,
            step("a"),
            step("now", after=(0,)),
            step("past", after=(0,), run_at=harbor.later(-5)),
            step("future", after=(0,), run_at=future),
        )
        a, *dependents = harbor.driver.get(list(record.steps))
        harbor.advance(7)
        harbor.finish(a)
        now_step, past_step, future_step = harbor.driver.get([job.id for job in dependents])
        assert (now_step.state, now_step.run_at) == (JobState.AVAILABLE, harbor.now())
        assert (past_step.state, past_step.run_at) == (JobState.AVAILABLE, harbor.now())
        assert (future_step.state, future_step.run_at) == (JobState.SCHEDULED, future)

    def test_get_workflow_of_an_unknown_id_raises(self, harbor: Harbor) -> None:
        record = workflow(harbor, step("a"))
        with pytest.raises(WorkflowNotFound):
            harbor.driver.get_workflow(record.id + 1000)


class WorkflowDataRules(HarborFixture):
    def test_a_chain_passes_each_result_as_the_first_argument(self, harbor: Harbor) -> None:
        record = workflow(
            harbor,
            step("a", args=(1,)),
            step("b", after=(0,), input=0, args=("x",)),
            step("c", after=(1,), input=1),
            result=2,
        )
        a, b, c = harbor.driver.get(list(record.steps))
        harbor.finish(a, 2)
        assert harbor.get(b.id).args == (2, "x")
        assert harbor.get(c.id).state is JobState.PENDING
        harbor.finish(b, {"k": [3]})
        assert harbor.get(c.id).args == ({"k": [3]},)

    def test_a_step_without_input_keeps_its_args(self, harbor: Harbor) -> None:
        record = workflow(harbor, step("a"), step("b", after=(0,), args=("own",)), result=1)
        a, b = harbor.driver.get(list(record.steps))
        harbor.finish(a, "ignored")
        assert (harbor.get(b.id).state, harbor.get(b.id).args) == (JobState.AVAILABLE, ("own",))

    def test_a_chord_callback_gets_member_results_in_header_order(self, harbor: Harbor) -> None:
        record = chord(harbor)
        m0, m1, m2, callback = harbor.driver.get(list(record.steps))
        harbor.finish(m2, "two")
        harbor.finish(m0, 0)
        assert harbor.get(callback.id).state is JobState.PENDING
        harbor.finish(m1, [1])
        released = harbor.get(callback.id)
        assert released.state is JobState.AVAILABLE
        assert released.args == ([0, [1], "two"], "extra")

    def test_a_callback_is_released_once_when_members_finish_at_the_same_instant(
        self, harbor: Harbor
    ) -> None:
        members = 8
        record = workflow(
            harbor,
            *(step(f"m{index}") for index in range(members)),
            step("callback", after=tuple(range(members)), input=list(range(members))),
            result=members,
        )
        leased = [harbor.lease_job(job) for job in harbor.driver.get(list(record.steps[:-1]))]
        start = threading.Barrier(members)

        def finish(job: JobRecord) -> None:
            start.wait()
            harbor.complete(job, job.task)

        threads = [threading.Thread(target=finish, args=(job,)) for job in leased]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        callback = harbor.get(record.steps[-1])
        assert callback.state is JobState.AVAILABLE
        assert callback.args == ([f"m{index}" for index in range(members)],)

    def test_a_nested_result_ref_keeps_its_shape(self, harbor: Harbor) -> None:
        record = workflow(
            harbor,
            step("a"),
            step("b"),
            step("c"),
            step("d", after=(0, 1, 2), input=[2, [0, 1]]),
            result=[3, [0]],
        )
        a, b, c, d = harbor.driver.get(list(record.steps))
        for job, result in ((a, "A"), (b, "B"), (c, "C")):
            harbor.finish(job, result)
        assert harbor.get(d.id).args == (["C", ["A", "B"]],)
        harbor.finish(d, "D")
        results = {job.id: job.result for job in harbor.driver.get(list(record.steps))}
        assert map_ref(harbor.driver.get_workflow(record.id).result, results) == ["D", ["A"]]

    def test_a_workflow_succeeds_when_its_last_step_succeeds(self, harbor: Harbor) -> None:
        record = workflow(harbor, step("a"), step("b"), result=[0, 1])
        a, b = harbor.driver.get(list(record.steps))
        harbor.finish(a)
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.RUNNING
        finished_at = harbor.advance(2)
        harbor.finish(b)
        done = harbor.driver.get_workflow(record.id)
        assert (done.state, done.finished_at) == (WorkflowState.SUCCEEDED, finished_at)


class WorkflowFailureRules(HarborFixture):
    def test_a_dead_step_cancels_its_dependents_and_fails_the_workflow(
        self, harbor: Harbor
    ) -> None:
        record = workflow(
            harbor,
            step("a"),
            step("b", after=(0,)),
            step("c", after=(1,)),
            step("d"),
            step("e", after=(3,)),
        )
        a, b, c, *_ = harbor.driver.get(list(record.steps))
        died_at = harbor.advance(1)
        harbor.fail(harbor.lease_job(a), permanent=True)
        assert states(harbor, record) == [
            JobState.DEAD,
            JobState.CANCELLED,
            JobState.CANCELLED,
            JobState.AVAILABLE,
            JobState.PENDING,
        ]
        for dependent in harbor.driver.get([b.id, c.id]):
            assert dependent.reason == dependency_reason(a.id, JobState.DEAD)
            assert dependent.finished_at == died_at
        failed = harbor.driver.get_workflow(record.id)
        assert (failed.state, failed.finished_at) == (WorkflowState.FAILED, died_at)

    def test_a_step_dead_at_rescue_cancels_its_dependents(self, harbor: Harbor) -> None:
        record = workflow(harbor, step("a", max_attempts=1), step("b", after=(0,)), result=1)
        a, b = harbor.driver.get(list(record.steps))
        harbor.lease_job(a)
        harbor.advance(3600)
        assert harbor.driver.rescue() == [a.id]
        assert states(harbor, record) == [JobState.DEAD, JobState.CANCELLED]
        assert harbor.get(b.id).reason == dependency_reason(a.id, JobState.DEAD)
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.FAILED

    def test_a_cancelled_step_cancels_its_dependents_and_the_workflow(self, harbor: Harbor) -> None:
        record = workflow(harbor, step("a"), step("b", after=(0,)), step("c"), result=1)
        a, b, _ = harbor.driver.get(list(record.steps))
        cancelled_at = harbor.advance(1)
        harbor.driver.cancel([a.id])
        assert states(harbor, record) == [
            JobState.CANCELLED,
            JobState.CANCELLED,
            JobState.AVAILABLE,
        ]
        assert harbor.get(a.id).reason == CANCELLED_BY_REQUEST
        assert harbor.get(b.id).reason == dependency_reason(a.id, JobState.CANCELLED)
        cancelled = harbor.driver.get_workflow(record.id)
        assert (cancelled.state, cancelled.finished_at) == (
            WorkflowState.CANCELLED,
            cancelled_at,
        )

    def test_a_dead_step_fails_a_cancelled_workflow(self, harbor: Harbor) -> None:
        record = workflow(harbor, step("a"), step("b"), result=[0, 1])
        a, b = harbor.driver.get(list(record.steps))
        harbor.driver.cancel([b.id])
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.CANCELLED
        died_at = harbor.advance(1)
        harbor.fail(harbor.lease_job(a), permanent=True)
        failed = harbor.driver.get_workflow(record.id)
        assert (failed.state, failed.finished_at) == (WorkflowState.FAILED, died_at)

    def test_requeueing_the_dead_step_resumes_the_workflow(self, harbor: Harbor) -> None:
        record = workflow(
            harbor,
            step("a", max_attempts=1),
            step("b", after=(0,), input=0),
            step("c", after=(1,), input=1),
            result=2,
        )
        a, b, c = harbor.driver.get(list(record.steps))
        harbor.fail(harbor.lease_job(a))
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.FAILED
        harbor.advance(1)
        harbor.driver.requeue([a.id])
        assert states(harbor, record) == [JobState.AVAILABLE, JobState.PENDING, JobState.PENDING]
        for requeued in harbor.driver.get([b.id, c.id]):
            assert (requeued.reason, requeued.finished_at, requeued.attempt) == (None, None, 0)
        resumed = harbor.driver.get_workflow(record.id)
        assert (resumed.state, resumed.finished_at) == (WorkflowState.RUNNING, None)
        harbor.finish(a, 1)
        harbor.finish(b, 2)
        harbor.finish(c, 3)
        assert harbor.get(c.id).args == (2,)
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.SUCCEEDED

    def test_a_requeued_step_takes_its_input_afresh(self, harbor: Harbor) -> None:
        record = workflow(
            harbor, step("a"), step("b", after=(0,), input=0, args=("x",), max_attempts=1), result=1
        )
        a, b = harbor.driver.get(list(record.steps))
        harbor.finish(a, "from-a")
        harbor.fail(harbor.lease_job(b))
        (requeued,) = harbor.driver.requeue([b.id])
        assert requeued.state is JobState.AVAILABLE
        assert requeued.args == ("from-a", "x")
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.RUNNING


class WorkflowCancellationRules(HarborFixture):
    def test_cancel_workflow_cancels_every_unfinished_step(self, harbor: Harbor) -> None:
        record = workflow(
            harbor, step("a"), step("b", after=(0,)), step("c"), step("d", after=(2,)), result=1
        )
        a, b, c, d = harbor.driver.get(list(record.steps))
        harbor.finish(a)
        running_b = harbor.lease_job(b)
        cancelled_at = harbor.advance(1)
        cancelled = harbor.driver.cancel_workflow(record.id)
        assert (cancelled.state, cancelled.finished_at) == (
            WorkflowState.CANCELLED,
            cancelled_at,
        )
        assert harbor.driver.get_workflow(record.id) == cancelled
        assert states(harbor, record) == [
            JobState.SUCCEEDED,
            JobState.RUNNING,
            JobState.CANCELLED,
            JobState.CANCELLED,
        ]
        for job in harbor.driver.get([c.id, d.id]):
            assert (job.reason, job.finished_at) == (WORKFLOW_CANCELLED, cancelled_at)
        assert harbor.get(b.id).cancel_requested is True
        beat = harbor.driver.heartbeat([harbor.lease_ref(running_b)], 30)
        assert beat.cancel_requested == frozenset({b.id})

    def test_a_running_step_asked_to_cancel_ends_cancelled_when_it_fails(
        self, harbor: Harbor
    ) -> None:
        record = workflow(harbor, step("a", max_attempts=3), step("b", after=(0,)), result=1)
        a, b = harbor.driver.get(list(record.steps))
        leased = harbor.lease_job(a)
        harbor.driver.cancel_workflow(record.id)
        assert harbor.get(b.id).state is JobState.CANCELLED
        harbor.fail(leased)
        assert ended(harbor, a.id) == (JobState.CANCELLED, WORKFLOW_CANCELLED)
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.CANCELLED

    @pytest.mark.parametrize("ends_by", ["fail", "snooze", "lease_expired"])
    def test_a_running_step_of_a_cancelled_workflow_ends_with_the_workflow_reason(
        self, harbor: Harbor, ends_by: str
    ) -> None:
        record = workflow(harbor, step("a", max_attempts=3), step("b"), result=[0, 1])
        a, b = harbor.driver.get(list(record.steps))
        leased_a, leased_b = harbor.lease_job(a), harbor.lease_job(b)
        harbor.driver.cancel_workflow(record.id)
        asked = harbor.get(a.id)
        assert (asked.state, asked.cancel_requested, asked.reason) == (
            JobState.RUNNING,
            True,
            WORKFLOW_CANCELLED,
        )
        beat = harbor.driver.heartbeat([harbor.lease_ref(leased_a)], 30)
        assert (beat.cancel_requested, harbor.get(a.id).reason) == (
            frozenset({a.id}),
            WORKFLOW_CANCELLED,
        )
        harbor.complete(leased_b, "done anyway")
        done = harbor.get(b.id)
        assert (done.state, done.reason, done.cancel_requested) == (
            JobState.SUCCEEDED,
            None,
            False,
        )
        ended_at = harbor.advance(60)
        if ends_by == "fail":
            harbor.fail(leased_a)
        elif ends_by == "snooze":
            assert leased_a.lease_token is not None
            request = SnoozeRequest(a.id, leased_a.lease_token, harbor.later(5))
            assert harbor.driver.snooze([request]) == []
        else:
            assert harbor.driver.rescue() == [a.id]
        stored = harbor.get(a.id)
        assert (stored.state, stored.reason, stored.finished_at) == (
            JobState.CANCELLED,
            WORKFLOW_CANCELLED,
            ended_at,
        )
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.CANCELLED

    @pytest.mark.parametrize("workflow_first", [False, True])
    def test_the_workflow_reason_wins_over_a_step_cancelled_on_its_own(
        self, harbor: Harbor, workflow_first: bool
    ) -> None:
        record = workflow(harbor, step("a"), step("b", after=(0,)), result=1)
        a, _ = harbor.driver.get(list(record.steps))
        leased = harbor.lease_job(a)
        if workflow_first:
            harbor.driver.cancel_workflow(record.id)
            harbor.driver.cancel([a.id])
        else:
            harbor.driver.cancel([a.id])
            assert harbor.get(a.id).reason is None
            harbor.driver.cancel_workflow(record.id)
        assert harbor.get(a.id).reason == WORKFLOW_CANCELLED
        harbor.fail(leased)
        assert ended(harbor, a.id) == (JobState.CANCELLED, WORKFLOW_CANCELLED)

    def test_a_running_step_cancelled_on_its_own_keeps_the_by_request_reason(
        self, harbor: Harbor
    ) -> None:
        record = workflow(harbor, step("a"), step("b"), result=[0, 1])
        a, b = harbor.driver.get(list(record.steps))
        leased = harbor.lease_job(a)
        harbor.driver.cancel([b.id])  # the workflow is cancelled, but not by cancel_workflow
        harbor.driver.cancel([a.id])
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.CANCELLED
        harbor.fail(leased)
        assert ended(harbor, a.id) == (JobState.CANCELLED, CANCELLED_BY_REQUEST)

    def test_a_running_step_of_a_failed_workflow_cancelled_gets_the_workflow_reason(
        self, harbor: Harbor
    ) -> None:
        record = workflow(harbor, step("a"), step("b"), result=[0, 1])
        a, b = harbor.driver.get(list(record.steps))
        harbor.fail(harbor.lease_job(a), permanent=True)
        leased = harbor.lease_job(b)
        assert harbor.driver.cancel_workflow(record.id).state is WorkflowState.FAILED
        harbor.fail(leased)
        assert ended(harbor, b.id) == (JobState.CANCELLED, WORKFLOW_CANCELLED)

    def test_requeue_clears_the_workflow_reason_of_a_step_that_ran_down(
        self, harbor: Harbor
    ) -> None:
        record = workflow(harbor, step("a", max_attempts=1))
        (a,) = harbor.driver.get(list(record.steps))
        leased = harbor.lease_job(a)
        harbor.driver.cancel_workflow(record.id)
        harbor.fail(leased)
        (requeued,) = harbor.driver.requeue([a.id])
        assert (requeued.state, requeued.reason) == (JobState.AVAILABLE, None)
        again = harbor.lease_job(requeued)
        harbor.fail(again)
        assert ended(harbor, a.id) == (JobState.DEAD, None)

    def test_cancel_workflow_of_a_failed_workflow_cancels_the_rest_and_stays_failed(
        self, harbor: Harbor
    ) -> None:
        record = workflow(harbor, step("a"), step("b"), result=[0, 1])
        a, b = harbor.driver.get(list(record.steps))
        failed_at = harbor.advance(1)
        harbor.fail(harbor.lease_job(a), permanent=True)
        dead = harbor.get(a.id)
        harbor.advance(1)
        still_failed = harbor.driver.cancel_workflow(record.id)
        assert (still_failed.state, still_failed.finished_at) == (WorkflowState.FAILED, failed_at)
        stored = harbor.get(b.id)
        assert (stored.state, stored.reason) == (JobState.CANCELLED, WORKFLOW_CANCELLED)
        assert harbor.get(a.id) == dead  # the dead-letter queue keeps it: cancel it by itself

    def test_cancel_workflow_of_a_succeeded_workflow_raises(self, harbor: Harbor) -> None:
        record = workflow(harbor, step("a"))
        harbor.finish(harbor.get(record.steps[0]))
        done = harbor.driver.get_workflow(record.id)
        before = harbor.snapshot()
        with pytest.raises(InvalidTransition) as refused:
            harbor.driver.cancel_workflow(record.id)
        assert harbor.snapshot() == before
        assert harbor.driver.get_workflow(record.id) == done
        # Every driver refuses with the same words: the error's builder.
        expected = InvalidTransition.workflow_finished(record.id, WorkflowState.SUCCEEDED)
        assert str(refused.value) == str(expected)
        assert refused.value.allowed_from == {"running", "failed", "cancelled"}
        assert (refused.value.kind, refused.value.event) == ("workflow", "cancel")


class WorkflowPruningRules(HarborFixture):
    @pytest.mark.parametrize("ending", [WorkflowState.SUCCEEDED, WorkflowState.CANCELLED])
    def test_prune_deletes_a_finished_workflow_with_its_steps(
        self, harbor: Harbor, ending: WorkflowState
    ) -> None:
        record = workflow(harbor, step("a"), step("b"), result=[0, 1])
        a, b = harbor.driver.get(list(record.steps))
        harbor.finish(a)
        if ending is WorkflowState.SUCCEEDED:
            harbor.finish(b)
        else:
            harbor.driver.cancel([b.id])
        assert harbor.driver.get_workflow(record.id).state is ending
        assert harbor.driver.prune(harbor.advance(1)) == 2
        with pytest.raises(WorkflowNotFound):
            harbor.driver.get_workflow(record.id)
        with pytest.raises(JobNotFound):
            harbor.driver.get([a.id])

    def test_prune_keeps_a_workflow_until_every_step_qualifies(self, harbor: Harbor) -> None:
        record = workflow(harbor, step("a"), step("b"), result=[0, 1])
        a, b = harbor.driver.get(list(record.steps))
        harbor.finish(a)
        horizon = harbor.advance(1)
        harbor.finish(b)
        before = harbor.snapshot()
        assert harbor.driver.prune(horizon) == 0
        assert harbor.snapshot() == before

    def test_prune_keeps_the_steps_of_a_running_workflow(self, harbor: Harbor) -> None:
        record = workflow(harbor, step("a"), step("b", after=(0,)), result=1)
        harbor.finish(harbor.get(record.steps[0]))
        before = harbor.snapshot()
        assert harbor.driver.prune(harbor.advance(3600)) == 0
        assert harbor.snapshot() == before

    def test_a_failed_workflow_stays_with_its_dead_step_until_dead_jobs_are_pruned(
        self, harbor: Harbor
    ) -> None:
        record = workflow(harbor, step("a"), step("b", after=(0,)), result=1)
        harbor.fail(harbor.lease_job(harbor.get(record.steps[0])), permanent=True)
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.FAILED
        before = harbor.snapshot()
        horizon = harbor.advance(3600)
        assert harbor.driver.prune(horizon) == 0
        assert harbor.snapshot() == before
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.FAILED
        everything = {JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED}
        assert harbor.driver.prune(horizon, everything, dry_run=True) == 2
        assert harbor.snapshot() == before
        assert harbor.driver.prune(horizon, everything) == 2
        with pytest.raises(WorkflowNotFound):
            harbor.driver.get_workflow(record.id)
        with pytest.raises(JobNotFound):
            harbor.driver.get(list(record.steps))
