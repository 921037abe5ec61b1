"""Rules of ``promote``, ``rescue`` and ``prune``: the jobs time moves on."""

from __future__ import annotations

from datetime import timedelta

import pytest

from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    DEFAULT_RETRY,
    EnqueueRequest,
    JobNotFound,
    JobState,
    PromoteResult,
    RetryPolicy,
    retry_delay,
)
from taskharbor.spec.records import LEASE_EXPIRED_MESSAGE, LEASE_EXPIRED_TYPE

from .harness import LEASE_SECONDS, Harbor, HarborFixture


class PromotingRules(HarborFixture):
    def test_promote_makes_due_scheduled_and_retrying_jobs_available(self, harbor: Harbor) -> None:
        scheduled = harbor.job_in(JobState.SCHEDULED)
        retrying = harbor.job_in(JobState.RETRYING)
        harbor.advance(3600 + 7)
        assert harbor.driver.promote() == PromoteResult(promoted=2, next_due=None)
        for job in (scheduled, retrying):
            stored = harbor.get(job.id)
            assert stored.state is JobState.AVAILABLE
            assert stored.run_at == job.run_at

    def test_promote_takes_jobs_due_exactly_now(self, harbor: Harbor) -> None:
        job = harbor.enqueue(run_at=harbor.later(5))
        harbor.clock.set(job.run_at)
        assert harbor.driver.promote().promoted == 1
        assert harbor.get(job.id).state is JobState.AVAILABLE

    def test_promote_leaves_future_jobs_and_tells_the_next_due(self, harbor: Harbor) -> None:
        due = harbor.enqueue(run_at=harbor.later(1))
        later = harbor.enqueue(run_at=harbor.later(90))
        sooner = harbor.enqueue(run_at=harbor.later(30.5))
        harbor.advance(2)
        assert harbor.driver.promote() == PromoteResult(promoted=1, next_due=sooner.run_at)
        assert harbor.get(due.id).state is JobState.AVAILABLE
        assert {harbor.get(job.id).state for job in (later, sooner)} == {JobState.SCHEDULED}

    def test_promote_with_nothing_due_changes_nothing(self, harbor: Harbor) -> None:
        assert harbor.driver.promote() == PromoteResult(promoted=0, next_due=None)
        job = harbor.enqueue(run_at=harbor.later(10))
        before = harbor.snapshot()
        assert harbor.driver.promote() == PromoteResult(promoted=0, next_due=job.run_at)
        assert harbor.snapshot() == before


RETRY_POLICIES = {
    "default": DEFAULT_RETRY,
    "constant": RetryPolicy("constant", base=42.5, jitter=False),
    "linear-capped": RetryPolicy("linear", base=7, cap=10, jitter=False),
    "exponential-jitter": RetryPolicy("exponential", base=3, cap=3600, factor=3, jitter=True),
    "at-once": RetryPolicy("constant", base=0, jitter=False),
}
"""Retry policies a rescue must apply exactly (the jitter is drawn from job id and attempt)."""


class RescuingRules(HarborFixture):
    def test_rescue_sends_an_expired_job_to_retrying_and_counts_the_attempt(
        self, harbor: Harbor
    ) -> None:
        job = harbor.running(max_attempts=3, retry=RETRY_POLICIES["constant"])
        harbor.advance(100)
        assert harbor.driver.rescue() == [job.id]
        stored = harbor.get(job.id)
        assert stored.state is JobState.RETRYING
        assert stored.attempt == 1
        assert stored.run_at == harbor.later(42.5)
        assert (stored.lease_token, stored.lease_expires_at, stored.leased_by) == (None, None, None)
        assert stored.finished_at is None
        (error,) = stored.errors
        assert (error.attempt, error.at) == (1, harbor.now())
        assert (error.type, error.message) == (LEASE_EXPIRED_TYPE, LEASE_EXPIRED_MESSAGE)

    @pytest.mark.parametrize("policy", list(RETRY_POLICIES))
    def test_a_rescued_job_waits_its_policys_delay_for_its_attempt(
        self, harbor: Harbor, policy: str
    ) -> None:
        retry = RETRY_POLICIES[policy]
        jobs = [harbor.enqueue(queue=f"q{n}", max_attempts=5, retry=retry) for n in range(3)]
        for attempt in (1, 2):
            for job in jobs:
                harbor.lease_job(job, lease_seconds=10)
            rescued_at = harbor.advance(10)
            assert harbor.driver.rescue() == [job.id for job in jobs]
            for job in jobs:
                stored = harbor.get(job.id)
                assert (stored.state, stored.attempt) == (JobState.RETRYING, attempt)
                assert stored.run_at == rescued_at + retry_delay(retry, job.id, attempt)
            harbor.clock.set(max(harbor.get(job.id).run_at for job in jobs))
            assert harbor.driver.promote().promoted == 3

    def test_a_rescued_job_is_not_leased_before_its_retry_time(self, harbor: Harbor) -> None:
        job = harbor.running(max_attempts=3, retry=RETRY_POLICIES["constant"])
        harbor.advance(LEASE_SECONDS)
        harbor.driver.rescue()
        assert harbor.driver.promote() == PromoteResult(0, harbor.later(42.5))
        assert harbor.lease([job.queue]) == []
        harbor.advance(42.5)
        assert harbor.driver.promote().promoted == 1
        assert harbor.lease_job(job).attempt == 2

    def test_rescue_takes_leases_expiring_exactly_now_and_leaves_live_ones(
        self, harbor: Harbor
    ) -> None:
        expiring = harbor.lease_job(harbor.enqueue(queue="a"), lease_seconds=10)
        live = harbor.lease_job(harbor.enqueue(queue="b"), lease_seconds=10.000001)
        assert expiring.lease_expires_at is not None
        harbor.clock.set(expiring.lease_expires_at)
        assert harbor.driver.rescue() == [expiring.id]
        assert harbor.get(live.id) == live

    def test_rescue_returns_the_ids_ascending(self, harbor: Harbor) -> None:
        # Leased in reverse order, with leases running out in yet another
        # order (the second job's first): only sorting by id gives the answer.
        jobs = [harbor.enqueue(queue=f"q{index}") for index in range(3)]
        for job, seconds in zip(reversed(jobs), (20.0, 10.0, 30.0), strict=True):
            harbor.lease_job(job, lease_seconds=seconds)
        harbor.advance(60)
        assert harbor.driver.rescue() == [job.id for job in jobs]
        assert harbor.driver.rescue() == []

    def test_rescue_of_the_last_attempt_is_dead(self, harbor: Harbor) -> None:
        job = harbor.running(max_attempts=1)
        harbor.advance(60)
        assert harbor.driver.rescue() == [job.id]
        stored = harbor.get(job.id)
        assert stored.state is JobState.DEAD
        assert stored.finished_at == harbor.now()
        assert [error.type for error in stored.errors] == [LEASE_EXPIRED_TYPE]

    def test_rescue_of_a_job_asked_to_cancel_is_cancelled(self, harbor: Harbor) -> None:
        job = harbor.running(max_attempts=3)
        harbor.driver.cancel([job.id])
        harbor.advance(60)
        assert harbor.driver.rescue() == [job.id]
        stored = harbor.get(job.id)
        assert stored.state is JobState.CANCELLED
        assert stored.reason == CANCELLED_BY_REQUEST
        assert stored.finished_at == harbor.now()
        assert stored.cancel_requested is False
        assert [error.type for error in stored.errors] == [LEASE_EXPIRED_TYPE]


FINISHED = (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)


class PruningRules(HarborFixture):
    def test_prune_deletes_succeeded_and_cancelled_jobs_finished_before_the_horizon(
        self, harbor: Harbor
    ) -> None:
        finished = [harbor.job_in(state) for state in (JobState.SUCCEEDED, JobState.CANCELLED)]
        horizon = harbor.advance(0.000001)
        assert harbor.driver.prune(horizon) == 2
        for job in finished:
            with pytest.raises(JobNotFound):
                harbor.get(job.id)

    def test_prune_keeps_the_dead_letter_queue_unless_told(self, harbor: Harbor) -> None:
        dead = harbor.job_in(JobState.DEAD, idempotency_key="held")
        horizon = harbor.advance(3600)
        assert harbor.driver.prune(horizon) == 0
        assert harbor.get(dead.id) == dead
        (again,) = harbor.driver.enqueue([EnqueueRequest("task", idempotency_key="held")])
        assert (again.created, again.job.id) == (False, dead.id)  # its key stays held
        assert harbor.driver.prune(horizon, {JobState.DEAD}) == 1
        with pytest.raises(JobNotFound):
            harbor.get(dead.id)

    @pytest.mark.parametrize("state", FINISHED)
    def test_prune_deletes_only_the_states_it_is_given(
        self, harbor: Harbor, state: JobState
    ) -> None:
        jobs = {finished: harbor.job_in(finished) for finished in FINISHED}
        horizon = harbor.advance(1)
        assert harbor.driver.prune(horizon, frozenset({state})) == 1
        with pytest.raises(JobNotFound):
            harbor.get(jobs[state].id)
        for other in set(FINISHED) - {state}:
            assert harbor.get(jobs[other].id) == jobs[other]

    def test_a_dry_run_counts_what_prune_would_delete_and_deletes_nothing(
        self, harbor: Harbor
    ) -> None:
        for state in (*FINISHED, JobState.AVAILABLE, JobState.SUCCEEDED):
            harbor.job_in(state)
        horizon = harbor.advance(1)
        harbor.job_in(JobState.SUCCEEDED)  # after the horizon
        before = harbor.snapshot()
        assert harbor.driver.prune(horizon, dry_run=True) == 3
        assert harbor.driver.prune(horizon, set(FINISHED), dry_run=True) == 4
        assert harbor.snapshot() == before
        assert harbor.driver.prune(horizon, set(FINISHED)) == 4

    def test_prune_keeps_jobs_finished_at_or_after_the_horizon(self, harbor: Harbor) -> None:
        job = harbor.job_in(JobState.SUCCEEDED)
        assert job.finished_at is not None
        harbor.advance(60)
        assert harbor.driver.prune(job.finished_at) == 0
        assert harbor.get(job.id) == job

    def test_prune_keeps_unfinished_jobs(self, harbor: Harbor) -> None:
        for state in JobState:
            if state not in FINISHED:
                harbor.job_in(state)
        before = harbor.snapshot()
        assert harbor.driver.prune(harbor.now() + timedelta(days=365), set(FINISHED)) == 0
        assert harbor.snapshot() == before
