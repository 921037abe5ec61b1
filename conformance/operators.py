"""Rules of the operator actions ``cancel`` and ``requeue``."""

from __future__ import annotations

import pytest

from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    EnqueueRequest,
    InvalidTransition,
    JobFilter,
    JobState,
    WorkflowState,
    dependency_reason,
)
from taskharbor.spec.table import FINISHED_JOB_STATES, QUEUED_JOB_STATES

from .harness import Harbor, HarborFixture
from .workflows import step, workflow

REQUEUABLE = (JobState.DEAD, JobState.CANCELLED)


class CancellingRules(HarborFixture):
    @pytest.mark.parametrize("state", sorted(QUEUED_JOB_STATES))
    def test_cancel_ends_a_queued_job_at_once(self, harbor: Harbor, state: JobState) -> None:
        job = harbor.job_in(state)
        harbor.advance(1)
        (cancelled,) = harbor.driver.cancel([job.id])
        assert cancelled.state is JobState.CANCELLED
        assert cancelled.finished_at == harbor.now()
        assert cancelled.reason == CANCELLED_BY_REQUEST
        assert (cancelled.attempt, cancelled.errors) == (job.attempt, job.errors)
        assert harbor.get(job.id) == cancelled

    def test_cancel_of_a_running_job_only_asks_and_heartbeat_tells(self, harbor: Harbor) -> None:
        job = harbor.running()
        (asked,) = harbor.driver.cancel([job.id])
        assert asked.state is JobState.RUNNING
        assert asked.cancel_requested is True
        assert (asked.finished_at, asked.reason) == (None, None)
        assert (asked.lease_token, asked.lease_expires_at) == (
            job.lease_token,
            job.lease_expires_at,
        )
        beat = harbor.driver.heartbeat([harbor.lease_ref(job)], 30)
        assert beat.cancel_requested == frozenset({job.id})
        assert beat.lost == ()

    def test_cancel_of_a_job_already_asked_to_cancel_leaves_it_as_it_is(
        self, harbor: Harbor
    ) -> None:
        job = harbor.running()
        (asked,) = harbor.driver.cancel([job.id])
        harbor.advance(1)
        assert harbor.driver.cancel([job.id]) == [asked]
        assert harbor.get(job.id) == asked

    @pytest.mark.parametrize("state", sorted(FINISHED_JOB_STATES - {JobState.DEAD}))
    def test_cancel_of_a_succeeded_or_cancelled_job_raises_and_changes_nothing(
        self, harbor: Harbor, state: JobState
    ) -> None:
        waiting = harbor.job_in(JobState.AVAILABLE)
        dead = harbor.job_in(JobState.DEAD)
        finished = harbor.job_in(state)
        before = harbor.snapshot()
        with pytest.raises(InvalidTransition):
            harbor.driver.cancel([waiting.id, dead.id, finished.id])
        assert harbor.snapshot() == before

    def test_cancel_takes_a_dead_job_out_of_the_dlq_with_its_errors_kept(
        self, harbor: Harbor
    ) -> None:
        dead = harbor.job_in(JobState.DEAD, max_attempts=3)
        harbor.advance(60)
        (cancelled,) = harbor.driver.cancel([dead.id])
        assert (cancelled.state, cancelled.reason) == (JobState.CANCELLED, CANCELLED_BY_REQUEST)
        assert (cancelled.errors, cancelled.attempt) == (dead.errors, dead.attempt)
        assert cancelled.finished_at == dead.finished_at  # it finished when it died
        assert harbor.get(dead.id) == cancelled
        assert harbor.driver.list_jobs(JobFilter(states=frozenset({JobState.DEAD}))) == []
        assert harbor.driver.count() == {(dead.queue, JobState.CANCELLED): 1}

    def test_cancel_of_a_mixed_batch_ends_each_job_by_its_own_state(self, harbor: Harbor) -> None:
        waiting = harbor.job_in(JobState.AVAILABLE)
        dead = harbor.job_in(JobState.DEAD)
        running = harbor.running(queue="mixed-running")
        retrying = harbor.job_in(JobState.RETRYING)
        harbor.advance(2)
        done = harbor.driver.cancel([dead.id, waiting.id, running.id, retrying.id])
        assert [(job.id, job.state) for job in done] == [
            (dead.id, JobState.CANCELLED),
            (waiting.id, JobState.CANCELLED),
            (running.id, JobState.RUNNING),
            (retrying.id, JobState.CANCELLED),
        ]
        assert [job.finished_at for job in done] == [
            dead.finished_at,
            harbor.now(),
            None,
            harbor.now(),
        ]
        assert done[2].cancel_requested is True
        assert harbor.driver.get([job.id for job in done]) == done

    def test_cancel_of_a_dead_step_leaves_its_workflow_failed(self, harbor: Harbor) -> None:
        record = workflow(
            harbor, step("a"), step("b"), step("c", after=(0, 1), input=[0, 1]), result=2
        )
        a, b, c = record.steps
        harbor.advance(1)
        harbor.fail(harbor.lease_job(harbor.get(a)), permanent=True)
        failed = harbor.driver.get_workflow(record.id)
        callback_step = harbor.get(c)
        assert (failed.state, callback_step.state) == (WorkflowState.FAILED, JobState.CANCELLED)
        harbor.advance(1)
        (cancelled,) = harbor.driver.cancel([a])
        assert cancelled.state is JobState.CANCELLED
        assert harbor.driver.get_workflow(record.id) == failed
        assert harbor.get(c) == callback_step  # cancelled when a died, with that reason
        harbor.advance(1)
        harbor.finish(harbor.get(b), "b")  # the steps now say "cancelled": it stays failed
        assert harbor.driver.get_workflow(record.id) == failed
        harbor.driver.requeue([a])  # and an operator can still resume it
        assert harbor.driver.get_workflow(record.id).state is WorkflowState.RUNNING
        assert [job.state for job in harbor.driver.get([a, c])] == [
            JobState.AVAILABLE,
            JobState.PENDING,
        ]

    def test_cancel_leaves_a_job_an_earlier_item_already_cancelled_through_its_workflow(
        self, harbor: Harbor
    ) -> None:
        chain = harbor.chain(EnqueueRequest("a"), EnqueueRequest("b"))
        a, b = chain.steps
        harbor.advance(1)
        cancelled = harbor.driver.cancel([a, b])
        assert [(job.id, job.state, job.reason) for job in cancelled] == [
            (a, JobState.CANCELLED, CANCELLED_BY_REQUEST),
            (b, JobState.CANCELLED, dependency_reason(a, JobState.CANCELLED)),
        ]
        assert {job.finished_at for job in cancelled} == {harbor.now()}
        assert harbor.driver.get([a, b]) == cancelled
        assert harbor.driver.get_workflow(chain.id).state is WorkflowState.CANCELLED


class RequeueingRules(HarborFixture):
    @pytest.mark.parametrize("state", REQUEUABLE)
    def test_requeue_puts_a_dead_or_cancelled_job_back_with_attempts_reset(
        self, harbor: Harbor, state: JobState
    ) -> None:
        job = harbor.job_in(state, max_attempts=2)
        harbor.advance(5)
        (requeued,) = harbor.driver.requeue([job.id])
        assert requeued.state is JobState.AVAILABLE
        assert requeued.attempt == 0
        assert requeued.run_at == harbor.now()
        assert (requeued.finished_at, requeued.reason, requeued.result) == (None, None, None)
        assert requeued.cancel_requested is False
        assert requeued.errors == job.errors
        assert harbor.get(job.id) == requeued
        assert harbor.lease_job(job).attempt == 1

    @pytest.mark.parametrize("state", [state for state in JobState if state not in REQUEUABLE])
    def test_requeue_of_any_other_state_raises_and_changes_nothing(
        self, harbor: Harbor, state: JobState
    ) -> None:
        dead = harbor.job_in(JobState.DEAD)
        other = harbor.job_in(state)
        before = harbor.snapshot()
        with pytest.raises(InvalidTransition):
            harbor.driver.requeue([dead.id, other.id])
        assert harbor.snapshot() == before

    def test_requeue_leaves_a_step_an_earlier_item_already_requeued_through_its_workflow(
        self, harbor: Harbor
    ) -> None:
        chain = harbor.chain(EnqueueRequest("a"), EnqueueRequest("b"))
        a, b = chain.steps
        harbor.fail(harbor.lease_job(harbor.get(a)), permanent=True)
        assert harbor.get(b).state is JobState.CANCELLED
        harbor.advance(1)
        requeued = harbor.driver.requeue([a, b])
        assert [(job.id, job.state) for job in requeued] == [
            (a, JobState.AVAILABLE),
            (b, JobState.PENDING),
        ]
        assert harbor.driver.get([a, b]) == requeued
        assert harbor.driver.get_workflow(chain.id).state is WorkflowState.RUNNING
