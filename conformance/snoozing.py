"""Rules of ``Driver.snooze``: run again later without using an attempt."""

from __future__ import annotations

from taskharbor.spec import CANCELLED_BY_REQUEST, JobRecord, JobState, SnoozeRequest

from .harness import Harbor, HarborFixture


def snooze(harbor: Harbor, job: JobRecord, seconds: float) -> None:
    assert job.lease_token is not None
    request = SnoozeRequest(job.id, job.lease_token, harbor.later(seconds))
    assert harbor.driver.snooze([request]) == []


class SnoozingRules(HarborFixture):
    def test_snooze_gives_the_attempt_back(self, harbor: Harbor) -> None:
        job = harbor.running(max_attempts=1)
        snooze(harbor, job, 0)
        assert harbor.get(job.id).attempt == 0
        harbor.driver.promote()
        again = harbor.lease_job(job)
        assert again.attempt == 1
        harbor.fail(again)
        assert harbor.get(job.id).state is JobState.DEAD

    def test_snooze_schedules_the_job_at_the_requested_time(self, harbor: Harbor) -> None:
        job = harbor.running()
        harbor.advance(3)
        run_at = harbor.later(42.000042)
        assert job.lease_token is not None
        assert harbor.driver.snooze([SnoozeRequest(job.id, job.lease_token, run_at)]) == []
        stored = harbor.get(job.id)
        assert stored.state is JobState.SCHEDULED
        assert stored.run_at == run_at
        assert (stored.lease_token, stored.lease_expires_at, stored.leased_by) == (None, None, None)
        assert (stored.errors, stored.finished_at) == ((), None)

    def test_a_job_snoozed_to_now_waits_for_promote(self, harbor: Harbor) -> None:
        job = harbor.running()
        snooze(harbor, job, 0)
        assert harbor.get(job.id).state is JobState.SCHEDULED
        assert harbor.lease([job.queue]) == []
        assert harbor.driver.promote().promoted == 1
        assert harbor.get(job.id).state is JobState.AVAILABLE

    def test_snooze_of_a_job_asked_to_cancel_cancels_it(self, harbor: Harbor) -> None:
        job = harbor.running()
        harbor.driver.cancel([job.id])
        harbor.advance(1)
        snooze(harbor, job, 60)
        stored = harbor.get(job.id)
        assert stored.state is JobState.CANCELLED
        assert (stored.reason, stored.finished_at) == (CANCELLED_BY_REQUEST, harbor.now())
        assert (stored.attempt, stored.run_at) == (0, job.run_at)
        assert (stored.cancel_requested, stored.lease_token) == (False, None)
