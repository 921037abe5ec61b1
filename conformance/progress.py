"""Rules of a running attempt's progress: carried by the heartbeat, fenced like it
(:mod:`taskharbor.spec.metadata`)."""

from __future__ import annotations

from taskharbor.spec import FlowLimits, JobFilter, JobRecord, JobState, LeaseRef, Progress

from .fencing import rescued_and_leased_again, token
from .harness import LEASE_SECONDS, Harbor, HarborFixture, requires


def beat(harbor: Harbor, job: JobRecord, progress: Progress | None) -> list[object]:
    """Heartbeat ``job``'s lease carrying ``progress``; the ids of the refused leases."""
    result = harbor.driver.heartbeat([LeaseRef(job.id, token(job), progress)], LEASE_SECONDS)
    return [lost.job_id for lost in result.lost]


class ProgressRules(HarborFixture):
    @requires("job_metadata")
    def test_a_heartbeat_stores_its_progress_and_every_read_returns_it(
        self, harbor: Harbor
    ) -> None:
        job = harbor.running()
        assert job.progress is None
        assert beat(harbor, job, Progress(0.25, "250 of 1000 rows")) == []
        assert harbor.get(job.id).progress == Progress(0.25, "250 of 1000 rows")
        assert beat(harbor, job, Progress(1)) == []
        (listed,) = harbor.driver.list_jobs(JobFilter())
        assert listed.progress == harbor.get(job.id).progress == Progress(1.0)

    @requires("job_metadata")
    def test_a_heartbeat_without_progress_keeps_the_stored_one(self, harbor: Harbor) -> None:
        job = harbor.running()
        beat(harbor, job, Progress(0.5, "half"))
        assert beat(harbor, job, None) == []
        assert harbor.get(job.id).progress == Progress(0.5, "half")

    @requires("job_metadata")
    def test_a_stale_leases_progress_is_refused_with_its_heartbeat(self, harbor: Harbor) -> None:
        stale = harbor.running()
        beat(harbor, stale, Progress(0.75, "old attempt"))
        current = rescued_and_leased_again(harbor, stale)
        assert current.progress is None
        assert beat(harbor, stale, Progress(0.9, "too late")) == [stale.id]
        assert harbor.get(stale.id).progress is None
        beat(harbor, current, Progress(0.1))
        assert beat(harbor, stale, Progress(0.9, "too late")) == [stale.id]
        assert harbor.get(stale.id).progress == Progress(0.1)

    @requires("job_metadata")
    def test_each_lease_of_a_batch_keeps_its_own_progress(self, harbor: Harbor) -> None:
        jobs = [harbor.running(queue=f"q{n}") for n in range(4)]
        harbor.complete(jobs[2])
        given = [Progress(0.2, "first"), None, Progress(0.3, "finished already"), Progress(0.4)]
        refs = [
            LeaseRef(job.id, token(job), progress)
            for job, progress in zip(jobs, given, strict=True)
        ]
        result = harbor.driver.heartbeat(refs, LEASE_SECONDS)
        assert [lost.job_id for lost in result.lost] == [jobs[2].id]
        stored = harbor.driver.get([job.id for job in jobs])
        assert [job.progress for job in stored] == [given[0], None, None, given[3]]

    @requires("job_metadata")
    def test_a_new_attempt_starts_without_progress(self, harbor: Harbor) -> None:
        job = harbor.running()
        beat(harbor, job, Progress(0.6))
        harbor.fail(job, retry_at=harbor.later(5))
        assert harbor.get(job.id).progress == Progress(0.6)  # kept while it waits
        harbor.advance(5)
        harbor.driver.promote()
        again = harbor.lease_job(job)
        assert (again.attempt, again.progress) == (2, None)
        assert harbor.get(job.id).progress is None

    @requires("job_metadata")
    def test_a_finished_job_keeps_its_last_attempts_progress(self, harbor: Harbor) -> None:
        for end in (JobState.SUCCEEDED, JobState.DEAD):
            job = harbor.running()
            beat(harbor, job, Progress(0.99, "almost"))
            if end is JobState.SUCCEEDED:
                harbor.complete(job, "done")
            else:
                harbor.fail(job, permanent=True)
            finished = harbor.get(job.id)
            assert (finished.state, finished.progress) == (end, Progress(0.99, "almost"))

    @requires("job_metadata")
    def test_a_progress_message_is_kept_exactly(self, harbor: Harbor) -> None:
        job = harbor.running()
        text = "ünïcode ✓ <b>&amp;</b> 'quoted' \"double\"" + "x" * 200
        beat(harbor, job, Progress(0, text))
        assert harbor.get(job.id).progress == Progress(0.0, text)

    @requires("job_metadata", "flow_control")
    def test_a_limited_jobs_new_attempt_starts_without_progress_too(self, harbor: Harbor) -> None:
        """Stores may lease jobs with flow limits another way (PostgreSQL: a function)."""
        job = harbor.running(flow=FlowLimits(concurrency=1), queue="limited")
        beat(harbor, job, Progress(0.7))
        harbor.fail(job, retry_at=harbor.now())
        harbor.driver.promote()
        again = harbor.lease_job(job)
        assert (again.attempt, again.progress) == (2, None)
        assert harbor.get(job.id).progress is None
