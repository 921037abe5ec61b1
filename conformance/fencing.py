"""Fencing: a report carrying a lease token that is not the job's live one is refused.

Refused items are *reported* (``LeaseLost.stale``: every driver says the same),
never raised, and the rest of the batch is applied.  Every rule holds for the
four fenced operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest

from taskharbor.spec import (
    Completion,
    Failure,
    JobRecord,
    JobState,
    LeaseLost,
    LeaseRef,
    SnoozeRequest,
)
from taskharbor.spec.errors import MISSING_JOB_STATE

from .harness import BOOM, LEASE_SECONDS, Harbor, HarborFixture

FENCED = ("complete", "fail", "snooze", "heartbeat")


def report(harbor: Harbor, operation: str, leases: Sequence[LeaseRef]) -> list[LeaseLost]:
    """Make one fenced call for every lease in ``leases``; return what it refused."""
    driver = harbor.driver
    if operation == "complete":
        return driver.complete([Completion(ref.job_id, ref.token, "result") for ref in leases])
    if operation == "fail":
        return driver.fail([Failure(ref.job_id, ref.token, BOOM) for ref in leases])
    if operation == "snooze":
        run_at = harbor.later(60)
        return driver.snooze([SnoozeRequest(ref.job_id, ref.token, run_at) for ref in leases])
    return list(driver.heartbeat(list(leases), LEASE_SECONDS).lost)


APPLIED = {
    "complete": JobState.SUCCEEDED,
    "fail": JobState.RETRYING,
    "snooze": JobState.SCHEDULED,
    "heartbeat": JobState.RUNNING,
}
"""The state a fenced operation leaves a job of three attempts in, when applied."""


def assert_applied(harbor: Harbor, operation: str, job: JobRecord) -> None:
    """Check that ``operation`` (made by :func:`report` just now) took effect on ``job``."""
    stored = harbor.get(job.id)
    assert stored.state is APPLIED[operation], (job.id, operation, stored.state)
    if operation == "heartbeat":
        assert stored.lease_expires_at == harbor.later(LEASE_SECONDS)


def token(job: JobRecord) -> str:
    assert job.lease_token is not None, f"job {job.id} was not leased"
    return job.lease_token


def rescued_and_leased_again(harbor: Harbor, job: JobRecord) -> JobRecord:
    """Let ``job``'s lease expire, rescue it, wait for its retry delay and lease it
    again (a second worker)."""
    assert job.lease_expires_at is not None
    harbor.clock.set(job.lease_expires_at)
    assert job.id in harbor.driver.rescue()
    harbor.clock.set(harbor.get(job.id).run_at)
    harbor.driver.promote()
    return harbor.lease_job(job)


class FencingRules(HarborFixture):
    @pytest.mark.parametrize("operation", FENCED)
    def test_a_stale_token_is_refused_after_rescue_and_a_new_lease(
        self, harbor: Harbor, operation: str
    ) -> None:
        stale = harbor.running(max_attempts=3)
        current = rescued_and_leased_again(harbor, stale)
        lost = report(harbor, operation, [harbor.lease_ref(stale)])
        assert lost == [LeaseLost.stale(stale.id, token(stale), JobState.RUNNING)]
        assert harbor.get(stale.id) == current

    @pytest.mark.parametrize("operation", FENCED)
    def test_a_rescued_jobs_old_token_is_refused(self, harbor: Harbor, operation: str) -> None:
        stale = harbor.running(max_attempts=3)
        assert stale.lease_expires_at is not None
        harbor.clock.set(stale.lease_expires_at)
        harbor.driver.rescue()
        before = harbor.get(stale.id)
        lost = report(harbor, operation, [harbor.lease_ref(stale)])
        assert lost == [LeaseLost.stale(stale.id, token(stale), JobState.RETRYING)]
        assert harbor.get(stale.id) == before

    @pytest.mark.parametrize("operation", FENCED)
    def test_a_finished_jobs_token_is_refused(self, harbor: Harbor, operation: str) -> None:
        job = harbor.running()
        harbor.complete(job, "first")
        before = harbor.get(job.id)
        lost = report(harbor, operation, [harbor.lease_ref(job)])
        assert lost == [LeaseLost.stale(job.id, token(job), JobState.SUCCEEDED)]
        assert harbor.get(job.id) == before

    @pytest.mark.parametrize("operation", FENCED)
    def test_a_token_that_was_never_issued_is_refused(self, harbor: Harbor, operation: str) -> None:
        job = harbor.running()
        lost = report(harbor, operation, [LeaseRef(job.id, "forged-token")])
        assert lost == [LeaseLost.stale(job.id, "forged-token", JobState.RUNNING)]
        assert harbor.get(job.id) == job

    @pytest.mark.parametrize("operation", FENCED)
    def test_an_expired_lease_not_rescued_yet_is_still_live(
        self, harbor: Harbor, operation: str
    ) -> None:
        job = harbor.running(max_attempts=3)
        assert job.lease_expires_at is not None
        harbor.clock.set(job.lease_expires_at + timedelta(seconds=5))
        assert report(harbor, operation, [harbor.lease_ref(job)]) == []
        assert_applied(harbor, operation, job)

    @pytest.mark.parametrize("operation", FENCED)
    def test_refused_items_are_reported_in_order_while_the_rest_applies(
        self, harbor: Harbor, operation: str
    ) -> None:
        jobs = [harbor.running(queue=f"q{index}", max_attempts=3) for index in range(4)]
        first_stale, first_live, second_stale, second_live = jobs
        harbor.advance(LEASE_SECONDS)
        harbor.driver.heartbeat([harbor.lease_ref(first_live), harbor.lease_ref(second_live)], 60)
        assert harbor.driver.rescue() == [first_stale.id, second_stale.id]
        before = [harbor.get(first_stale.id), harbor.get(second_stale.id)]
        batch = [second_stale, first_live, first_stale, second_live]
        lost = report(harbor, operation, [harbor.lease_ref(job) for job in batch])
        assert lost == [
            LeaseLost.stale(second_stale.id, token(second_stale), JobState.RETRYING),
            LeaseLost.stale(first_stale.id, token(first_stale), JobState.RETRYING),
        ]
        assert [harbor.get(first_stale.id), harbor.get(second_stale.id)] == before
        for job in (first_live, second_live):
            assert_applied(harbor, operation, job)

    @pytest.mark.parametrize("operation", FENCED)
    def test_a_job_that_no_longer_exists_is_a_lost_lease_for_that_item_only(
        self, harbor: Harbor, operation: str
    ) -> None:
        pruned = harbor.running(queue="pruned")
        harbor.complete(pruned, "done")
        harbor.advance(1)
        assert harbor.driver.prune(harbor.now()) == 1
        live = harbor.running(queue="live", max_attempts=3)
        never = LeaseRef(10**9, "never-issued")
        lost = report(harbor, operation, [harbor.lease_ref(pruned), harbor.lease_ref(live), never])
        assert lost == [
            LeaseLost.missing(pruned.id, token(pruned)),
            LeaseLost.missing(never.job_id, never.token),
        ]
        assert [item.state for item in lost] == [MISSING_JOB_STATE] * 2
        assert "no longer exists" in str(lost[0])
        assert_applied(harbor, operation, live)
