"""Rules of ``Driver.lease`` and ``Driver.heartbeat``: which jobs, in which order, with what."""

from __future__ import annotations

import threading
from datetime import timedelta

from taskharbor.spec import EnqueueRequest, JobState

from .harness import Harbor, HarborFixture


class LeasingRules(HarborFixture):
    def test_lease_order_is_priority_then_run_at_then_id(self, harbor: Harbor) -> None:
        older = harbor.later(-20)
        old = harbor.later(-10)
        late_first = harbor.enqueue("late-first", run_at=old)
        urgent = harbor.enqueue("urgent", priority=5)
        oldest = harbor.enqueue("oldest", run_at=older)
        late_second = harbor.enqueue("late-second", run_at=old)
        lowly = harbor.enqueue("lowly", priority=-1, run_at=older)
        leased = [harbor.lease()[0].id for _ in range(5)]
        assert leased == [urgent.id, oldest.id, late_first.id, late_second.id, lowly.id]

    def test_lease_takes_only_jobs_of_the_given_queues(self, harbor: Harbor) -> None:
        wanted = [harbor.enqueue(queue="a"), harbor.enqueue(queue="c")]
        harbor.enqueue(queue="b")
        leased = harbor.lease(["a", "c"], limit=10)
        assert sorted(job.id for job in leased) == [job.id for job in wanted]
        assert harbor.lease(["a", "c"], limit=10) == []

    def test_lease_returns_at_most_limit_jobs(self, harbor: Harbor) -> None:
        harbor.driver.enqueue([EnqueueRequest("task") for _ in range(5)])
        assert len(harbor.lease(limit=3)) == 3
        assert len(harbor.lease(limit=3)) == 2
        assert harbor.lease(limit=3) == []

    def test_lease_takes_only_available_jobs(self, harbor: Harbor) -> None:
        others = [harbor.job_in(state) for state in JobState if state is not JobState.AVAILABLE]
        harbor.advance(3600)  # the scheduled and retrying jobs are due, but not promoted
        assert {harbor.get(job.id).state for job in others} == set(JobState) - {JobState.AVAILABLE}
        assert harbor.lease([job.queue for job in others], limit=10) == []

    def test_lease_counts_an_attempt(self, harbor: Harbor) -> None:
        job = harbor.enqueue(max_attempts=3)
        first = harbor.lease_job(job)
        assert first.attempt == 1
        harbor.fail(first)
        assert harbor.driver.promote().promoted == 1
        assert harbor.lease_job(job).attempt == 2

    def test_lease_sets_the_lease_fields(self, harbor: Harbor) -> None:
        job = harbor.enqueue()
        harbor.advance(1.5)
        (leased,) = harbor.lease(lease_seconds=12.25, worker_id="host-7")
        assert leased.id == job.id
        assert leased.state is JobState.RUNNING
        assert isinstance(leased.lease_token, str) and leased.lease_token
        assert leased.leased_by == "host-7"
        assert leased.lease_expires_at == harbor.now() + timedelta(seconds=12.25)
        assert leased.run_at == job.run_at
        assert harbor.get(job.id) == leased

    def test_every_lease_gets_a_new_token(self, harbor: Harbor) -> None:
        both = harbor.driver.enqueue([EnqueueRequest("task"), EnqueueRequest("task")])
        first, second = harbor.lease(limit=2, lease_seconds=1)
        harbor.advance(1)
        assert harbor.driver.rescue() == [result.job.id for result in both]
        harbor.clock.set(max(job.run_at for job in harbor.all_jobs()))
        assert harbor.driver.promote().promoted == 2
        again = harbor.lease(limit=2)
        tokens = {job.lease_token for job in (first, second, *again)}
        assert len(tokens) == 4

    def test_concurrent_leases_never_return_the_same_job(self, harbor: Harbor) -> None:
        harbor.driver.enqueue([EnqueueRequest("task") for _ in range(60)])
        leased: list[int] = []
        lock = threading.Lock()

        def drain() -> None:
            while batch := harbor.lease(limit=3):
                with lock:
                    leased.extend(job.id for job in batch)

        workers = [threading.Thread(target=drain) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert len(leased) == 60
        assert len(set(leased)) == 60

    def test_heartbeat_extends_a_live_lease(self, harbor: Harbor) -> None:
        job = harbor.running()
        harbor.advance(20)
        result = harbor.driver.heartbeat([harbor.lease_ref(job)], 45.5)
        assert result.lost == ()
        assert result.cancel_requested == frozenset()
        stored = harbor.get(job.id)
        assert stored.lease_expires_at == harbor.now() + timedelta(seconds=45.5)
        assert stored.state is JobState.RUNNING
        assert (stored.lease_token, stored.attempt) == (job.lease_token, job.attempt)
