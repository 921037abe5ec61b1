"""Rules of ``Driver.fail``: retrying, dead, cancelled, and the error history."""

from __future__ import annotations

import pytest

from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    ErrorInfo,
    ErrorReport,
    Failure,
    JobRecord,
    JobState,
)

from .harness import BOOM, Harbor, HarborFixture


def assert_lease_cleared(job: JobRecord) -> None:
    assert (job.lease_token, job.lease_expires_at, job.leased_by) == (None, None, None)
    assert job.cancel_requested is False


class FailingRules(HarborFixture):
    def test_a_failed_attempt_retries_at_retry_at(self, harbor: Harbor) -> None:
        job = harbor.running(max_attempts=3)
        harbor.advance(2)
        retry_at = harbor.later(10.000001)
        harbor.fail(job, retry_at=retry_at)
        stored = harbor.get(job.id)
        assert stored.state is JobState.RETRYING
        assert stored.run_at == retry_at
        assert stored.attempt == 1
        assert (stored.finished_at, stored.reason) == (None, None)
        assert_lease_cleared(stored)

    def test_a_failed_attempt_without_retry_at_retries_now(self, harbor: Harbor) -> None:
        job = harbor.running(max_attempts=3)
        harbor.advance(2)
        harbor.fail(job)
        stored = harbor.get(job.id)
        assert stored.state is JobState.RETRYING
        assert stored.run_at == harbor.now()

    def test_a_failure_on_the_last_attempt_is_dead(self, harbor: Harbor) -> None:
        job = harbor.enqueue(max_attempts=2)
        harbor.fail(harbor.lease_job(job))
        harbor.driver.promote()
        harbor.advance(1)
        harbor.fail(harbor.lease_job(job), retry_at=harbor.later(60))
        stored = harbor.get(job.id)
        assert stored.state is JobState.DEAD
        assert stored.attempt == 2
        assert stored.finished_at == harbor.now()
        assert stored.reason is None
        assert_lease_cleared(stored)

    def test_a_permanent_failure_is_dead_at_once(self, harbor: Harbor) -> None:
        job = harbor.running(max_attempts=5)
        harbor.advance(1)
        harbor.fail(job, retry_at=harbor.later(60), permanent=True)
        stored = harbor.get(job.id)
        assert stored.state is JobState.DEAD
        assert (stored.attempt, stored.finished_at) == (1, harbor.now())
        assert_lease_cleared(stored)

    @pytest.mark.parametrize("permanent", [False, True])
    @pytest.mark.parametrize("max_attempts", [1, 3])
    def test_a_failure_after_a_cancel_request_is_cancelled(
        self, harbor: Harbor, permanent: bool, max_attempts: int
    ) -> None:
        job = harbor.running(max_attempts=max_attempts)
        harbor.driver.cancel([job.id])
        harbor.advance(1)
        harbor.fail(job, permanent=permanent)
        stored = harbor.get(job.id)
        assert stored.state is JobState.CANCELLED
        assert stored.reason == CANCELLED_BY_REQUEST
        assert stored.finished_at == harbor.now()
        assert_lease_cleared(stored)

    def test_each_failure_appends_its_error_with_attempt_and_time(self, harbor: Harbor) -> None:
        job = harbor.enqueue(max_attempts=3)
        first_at = harbor.advance(1.25)
        harbor.fail(harbor.lease_job(job))
        harbor.driver.promote()
        second_at = harbor.advance(2.5)
        leased = harbor.lease_job(job)
        second = ErrorReport(type="ValueError", message="bad value", traceback=None)
        assert leased.lease_token is not None
        assert harbor.driver.fail([Failure(job.id, leased.lease_token, second)]) == []
        assert harbor.get(job.id).errors == (
            ErrorInfo(1, first_at, BOOM.type, BOOM.message, BOOM.traceback),
            ErrorInfo(2, second_at, "ValueError", "bad value", None),
        )
