"""Rules of ``Driver.complete``: the result is stored and the job ends ``succeeded``."""

from __future__ import annotations

from taskharbor.spec import JobState

from .harness import Harbor, HarborFixture


class CompletingRules(HarborFixture):
    def test_complete_stores_the_result_and_ends_the_job(self, harbor: Harbor) -> None:
        job = harbor.running(max_attempts=3)
        finished_at = harbor.advance(4.5)
        harbor.complete(job, {"rows": [1, 2.5, None], "ok": True})
        stored = harbor.get(job.id)
        assert stored.state is JobState.SUCCEEDED
        assert stored.result == {"rows": [1, 2.5, None], "ok": True}
        assert stored.finished_at == finished_at
        assert (stored.attempt, stored.errors, stored.reason) == (1, (), None)
        assert (stored.lease_token, stored.lease_expires_at, stored.leased_by) == (None, None, None)

    def test_complete_of_a_job_asked_to_cancel_still_succeeds(self, harbor: Harbor) -> None:
        job = harbor.running()
        harbor.driver.cancel([job.id])
        harbor.complete(job, "done anyway")
        stored = harbor.get(job.id)
        assert (stored.state, stored.result) == (JobState.SUCCEEDED, "done anyway")
        assert (stored.cancel_requested, stored.reason) == (False, None)
