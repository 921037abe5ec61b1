"""Rules of flow control: the guards of ``lease`` (:mod:`taskharbor.spec.flow`).

Every test here needs the ``flow_control`` capability.  A job held back by a
limit stays ``available`` and the lease passes over it to the next job; each
guard counts the store's state with the limits the candidate job carries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from taskharbor.spec import (
    EnqueueRequest,
    FlowLimits,
    JobRecord,
    JobState,
    LeaseRef,
    OnDead,
    RateLimit,
    SnoozeRequest,
)

from .harness import Harbor, HarborFixture, requires

HELD_BACK = 1_500
"""More held-back jobs than a lease should ever need to pass over at once."""


def ids(jobs: list[JobRecord]) -> list[int]:
    return [job.id for job in jobs]


def sequence(key: str = "acct:1", on_dead: OnDead = OnDead.BLOCK) -> FlowLimits:
    return FlowLimits(key=key, sequence=on_dead)


def _complete(harbor: Harbor, job: JobRecord) -> None:
    harbor.complete(job)


def _fail(harbor: Harbor, job: JobRecord) -> None:
    harbor.fail(job, retry_at=harbor.later(3600))


def _fail_permanently(harbor: Harbor, job: JobRecord) -> None:
    harbor.fail(job, permanent=True)


def _snooze(harbor: Harbor, job: JobRecord) -> None:
    assert job.lease_token is not None
    assert harbor.driver.snooze([SnoozeRequest(job.id, job.lease_token, harbor.later(3600))]) == []


def _cancel(harbor: Harbor, job: JobRecord) -> None:
    harbor.driver.cancel([job.id])
    assert job.lease_token is not None
    assert harbor.driver.heartbeat([LeaseRef(job.id, job.lease_token)], 30).cancel_requested
    harbor.fail(job)
    assert harbor.get(job.id).state is JobState.CANCELLED


def _expire(harbor: Harbor, job: JobRecord) -> None:
    harbor.advance(31)
    assert harbor.driver.rescue() == [job.id]


ENDINGS: dict[str, Callable[[Harbor, JobRecord], None]] = {
    "complete": _complete,
    "fail": _fail,
    "fail permanently": _fail_permanently,
    "snooze": _snooze,
    "cancel": _cancel,
    "lease expiry": _expire,
}
"""Every way a running job stops running, each of which frees its slot."""


class FlowControlRules(HarborFixture):
    @requires("flow_control")
    def test_limits_are_stored_with_the_job(self, harbor: Harbor) -> None:
        flow = FlowLimits(
            concurrency=3, key="k", key_concurrency=2, rate=RateLimit(5, 60.0, per_key=True)
        )
        job = harbor.enqueue(flow=flow)
        assert job.flow == flow
        assert harbor.lease_job(job).flow == flow
        assert harbor.get(job.id).flow == flow
        assert harbor.enqueue().flow is None

    @requires("flow_control")
    def test_task_concurrency_reached_exactly(self, harbor: Harbor) -> None:
        flow = FlowLimits(concurrency=2)
        jobs = [harbor.enqueue(flow=flow) for _ in range(3)]
        assert ids(harbor.lease(limit=10)) == ids(jobs[:2])
        assert harbor.lease(limit=10) == []
        assert harbor.get(jobs[2].id).state is JobState.AVAILABLE

    @requires("flow_control")
    @pytest.mark.parametrize("ending", list(ENDINGS))
    def test_a_running_job_frees_its_slot_when_it_stops(self, harbor: Harbor, ending: str) -> None:
        flow = FlowLimits(concurrency=1, key="k", key_concurrency=1)
        first = harbor.running(flow=flow)
        second = harbor.enqueue(flow=flow)
        assert harbor.lease(limit=10) == []
        ENDINGS[ending](harbor, first)
        assert ids(harbor.lease(limit=10)) == [second.id]

    @requires("flow_control")
    def test_a_held_job_does_not_hold_the_jobs_behind_it(self, harbor: Harbor) -> None:
        harbor.running("limited", flow=FlowLimits(concurrency=1))
        held = harbor.enqueue("limited", priority=5, flow=FlowLimits(concurrency=1))
        other = harbor.enqueue("other")
        assert ids(harbor.lease(limit=10)) == [other.id]
        assert harbor.get(held.id).state is JobState.AVAILABLE

    @requires("flow_control")
    def test_a_lease_passes_over_any_number_of_held_jobs(self, harbor: Harbor) -> None:
        """The walk past held-back jobs has no bound: a sequence's head behind more of its
        followers in lease order than any bound (here they have a higher priority; a
        retried head is behind them too) is leased, or neither it nor they would run."""
        head = harbor.enqueue(flow=sequence())
        followers = [EnqueueRequest("task", priority=1, flow=sequence()) for _ in range(HELD_BACK)]
        harbor.driver.enqueue(followers)
        assert ids(harbor.lease(limit=2)) == [head.id]

    @requires("flow_control")
    def test_a_sequence_head_of_another_queue_task_or_limits_is_leased_in_its_own_place(
        self, harbor: Harbor
    ) -> None:
        """A sequence's head behind its followers in lease order but not one of their kind
        (another queue, another task, other limits): the followers wait, the head is leased
        only by a lease of its own queue, at its own place in lease order."""
        elsewhere = harbor.enqueue(queue="later", flow=sequence("a"))
        other_task = harbor.enqueue("other", flow=sequence("b"))
        raised = FlowLimits(key="c", sequence=OnDead.BLOCK, concurrency=10)
        other_limits = harbor.enqueue(flow=raised)
        free = harbor.enqueue()
        for key in ("a", "b", "c"):
            harbor.enqueue(priority=1, flow=sequence(key))
        assert ids(harbor.lease(limit=10)) == [other_task.id, other_limits.id, free.id]
        assert ids(harbor.lease(["default", "later"], limit=10)) == [elsewhere.id]

    @requires("flow_control")
    def test_task_concurrency_counts_every_running_job_of_the_task(self, harbor: Harbor) -> None:
        harbor.running("t")
        harbor.enqueue("other", flow=FlowLimits(concurrency=1))  # another task: not counted
        held = harbor.enqueue("t", flow=FlowLimits(concurrency=1))
        leased = harbor.lease(limit=10)
        assert held.id not in ids(leased) and len(leased) == 1

    @requires("flow_control")
    def test_a_job_leased_earlier_in_the_call_counts_whatever_its_limits(
        self, harbor: Harbor
    ) -> None:
        harbor.running("w", queue="warm", flow=FlowLimits(concurrency=5))  # a lease of limits
        plain = harbor.enqueue("t", priority=2)  # no limits: still a running job of t
        keyed = harbor.enqueue("u", priority=1, flow=FlowLimits(key="k"))  # no key limit
        by_task = harbor.enqueue("t", flow=FlowLimits(concurrency=1))
        by_key = harbor.enqueue("v", flow=FlowLimits(key="k", key_concurrency=1))
        assert ids(harbor.lease(limit=10)) == [plain.id, keyed.id]
        assert {harbor.get(by_task.id).state, harbor.get(by_key.id).state} == {JobState.AVAILABLE}

    @requires("flow_control")
    def test_a_key_spans_tasks_and_queues(self, harbor: Harbor) -> None:
        harbor.running("a", queue="q1", flow=FlowLimits(key="acct:1"))
        held = harbor.enqueue("b", queue="q2", flow=FlowLimits(key="acct:1", key_concurrency=1))
        free = harbor.enqueue("b", queue="q2", flow=FlowLimits(key="acct:2", key_concurrency=1))
        assert ids(harbor.lease(["q1", "q2"], limit=10)) == [free.id]
        assert harbor.get(held.id).state is JobState.AVAILABLE

    @requires("flow_control")
    def test_key_concurrency_reached_exactly_within_one_call(self, harbor: Harbor) -> None:
        jobs = [harbor.enqueue(flow=FlowLimits(key="k", key_concurrency=2)) for _ in range(3)]
        other = harbor.enqueue(flow=FlowLimits(key="j", key_concurrency=2))
        assert ids(harbor.lease(limit=10)) == [*ids(jobs[:2]), other.id]

    @requires("flow_control")
    def test_each_job_obeys_the_limit_it_carries(self, harbor: Harbor) -> None:
        """A limit changed between deployments: old jobs keep theirs, new ones obey theirs."""
        harbor.running(flow=FlowLimits(concurrency=1, key="k", key_concurrency=1))
        raised = harbor.enqueue(flow=FlowLimits(concurrency=2, key="k", key_concurrency=2))
        old = harbor.enqueue(flow=FlowLimits(concurrency=1, key="k", key_concurrency=1))
        higher = harbor.enqueue(flow=FlowLimits(concurrency=3, key="k", key_concurrency=2))
        assert ids(harbor.lease(limit=10)) == [raised.id]
        assert {harbor.get(old.id).state, harbor.get(higher.id).state} == {JobState.AVAILABLE}
        unlimited = harbor.enqueue()
        assert ids(harbor.lease(limit=10)) == [unlimited.id]

    @requires("flow_control")
    def test_a_sequence_starts_its_jobs_in_enqueue_order(self, harbor: Harbor) -> None:
        first = harbor.enqueue(flow=sequence())
        second = harbor.enqueue(flow=sequence(), priority=9)
        other = harbor.enqueue(flow=sequence("acct:2"))
        assert ids(harbor.lease(limit=10)) == [first.id, other.id]
        assert harbor.lease(limit=10) == []
        harbor.complete(harbor.get(first.id))
        assert ids(harbor.lease(limit=10)) == [second.id]

    @requires("flow_control")
    @pytest.mark.parametrize("state", [JobState.SCHEDULED, JobState.RETRYING, JobState.PENDING])
    def test_an_unfinished_earlier_job_holds_its_sequence(
        self, harbor: Harbor, state: JobState
    ) -> None:
        if state is JobState.PENDING:
            workflow = harbor.chain(
                EnqueueRequest("first", queue="deps"), EnqueueRequest("task", flow=sequence())
            )
            earlier = harbor.get(workflow.steps[1])
        else:
            earlier = harbor.job_in(state, queue="default", flow=sequence())
        assert earlier.state is state
        later = harbor.enqueue(flow=sequence())
        assert harbor.lease(limit=10) == []
        harbor.driver.cancel([earlier.id])
        assert ids(harbor.lease(limit=10)) == [later.id]

    @requires("flow_control")
    @pytest.mark.parametrize("on_dead", list(OnDead))
    def test_a_dead_job_blocks_or_is_skipped_as_it_says(
        self, harbor: Harbor, on_dead: OnDead
    ) -> None:
        dead = harbor.job_in(JobState.DEAD, queue="default", flow=sequence(on_dead=on_dead))
        later = harbor.enqueue(flow=sequence(on_dead=OnDead.BLOCK))
        if on_dead is OnDead.SKIP:
            assert ids(harbor.lease(limit=10)) == [later.id]
            return
        assert harbor.lease(limit=10) == []
        harbor.driver.requeue([dead.id])
        assert ids(harbor.lease(limit=10)) == [dead.id]

    @requires("flow_control")
    def test_a_pruned_dead_job_no_longer_blocks(self, harbor: Harbor) -> None:
        harbor.job_in(JobState.DEAD, queue="default", flow=sequence())
        later = harbor.enqueue(flow=sequence())
        assert harbor.lease(limit=10) == []
        harbor.advance(1)
        assert harbor.driver.prune(harbor.now(), states={JobState.DEAD}) == 1
        assert ids(harbor.lease(limit=10)) == [later.id]

    @requires("flow_control")
    def test_a_rate_limit_counts_starts_in_a_sliding_window(self, harbor: Harbor) -> None:
        flow = FlowLimits(rate=RateLimit(2, 60.0))
        jobs = [harbor.enqueue(flow=flow) for _ in range(4)]
        first_two = harbor.lease(limit=10)
        assert ids(first_two) == ids(jobs[:2])
        for job in first_two:  # finishing does not give a start back
            harbor.complete(job)
        harbor.advance(30)
        assert harbor.lease(limit=10) == []
        harbor.advance(29.999999)
        assert harbor.lease(limit=10) == []
        harbor.advance(0.000001)  # exactly one window after the first starts
        assert ids(harbor.lease(limit=10)) == ids(jobs[2:])

    @requires("flow_control")
    def test_rate_buckets_are_per_task_or_per_key(self, harbor: Harbor) -> None:
        per_task = FlowLimits(rate=RateLimit(1, 60.0))
        a1, a2 = harbor.enqueue("a", flow=per_task), harbor.enqueue("a", flow=per_task)
        b1 = harbor.enqueue("b", flow=per_task)

        def per_key(key: str) -> FlowLimits:
            return FlowLimits(key=key, rate=RateLimit(1, 60.0, per_key=True))

        k1, k2, j1 = (harbor.enqueue("a", flow=per_key(k)) for k in ("k", "k", "j"))
        assert ids(harbor.lease(limit=10)) == [a1.id, b1.id, k1.id, j1.id]
        assert harbor.lease(limit=10) == []  # a2 and k2: their buckets are spent
        assert {harbor.get(a2.id).state, harbor.get(k2.id).state} == {JobState.AVAILABLE}

    @requires("flow_control")
    def test_only_jobs_with_a_rate_limit_record_starts(self, harbor: Harbor) -> None:
        harbor.running()
        limited = harbor.enqueue(flow=FlowLimits(rate=RateLimit(1, 60.0)))
        assert ids(harbor.lease(limit=10)) == [limited.id]

    @requires("flow_control")
    def test_concurrent_leases_never_pass_a_limit(self, harbor: Harbor) -> None:
        for key in ("a", "b"):
            for _ in range(6):
                harbor.enqueue(flow=FlowLimits(concurrency=3, key=key, key_concurrency=1))
        leased: list[JobRecord] = []
        barrier = threading.Barrier(6)

        def take() -> None:
            barrier.wait()
            leased.extend(harbor.driver.lease(["default"], 2, 30.0, "w"))

        threads = [threading.Thread(target=take) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        keys = sorted(str(job.flow.key) for job in leased if job.flow is not None)
        assert len(keys) == len(set(keys)), f"a key's limit of 1 passed: {keys}"
        # A lease that finds a slot's lock held skips that job rather than wait (the
        # guards promise safety, not that one round fills every slot): a later lease
        # takes whatever slot is left, and no more.
        leased.extend(harbor.driver.lease(["default"], 10, 30.0, "w"))
        keys = sorted(str(job.flow.key) for job in leased if job.flow is not None)
        assert keys == ["a", "b"]

    @requires("flow_control", "queue_pause")
    def test_a_paused_queues_limited_jobs_are_not_leased(self, harbor: Harbor) -> None:
        flow = FlowLimits(key="k", key_concurrency=1)
        held = harbor.enqueue(queue="paused", flow=flow)
        other = harbor.enqueue(queue="open", flow=flow)
        harbor.driver.pause_queues(["paused"], True)
        assert ids(harbor.lease(["paused", "open"], limit=10)) == [other.id]
        assert harbor.get(held.id).state is JobState.AVAILABLE
