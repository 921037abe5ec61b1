"""Rules of ``Driver.wait_for_jobs`` and ``Driver.wait_for_finished`` that a
driver's capabilities promise.

A driver that declares ``notifications`` wakes its waiters on every
transition into ``available``, not only on enqueue: ``promote``, ``rescue``,
``requeue`` and a workflow step's ``release`` make a job ready just as well,
and a worker that sleeps through them waits a whole poll for nothing.  It
also wakes a producer waiting for a job (or a workflow's steps) on every
transition into a finished state, whichever call made it, and never makes
it wait for a job that finished before the wait began.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import pytest

from taskharbor.spec import (
    EnqueueRequest,
    InvalidRequest,
    JobState,
    SnoozeRequest,
    StepSpec,
    WorkflowGraph,
)

from .harness import Harbor, HarborFixture, requires

WAIT_SECONDS = 30.0
"""How long the waiter is willing to wait: far longer than a wake-up may take."""

ROUNDS = 50
"""How many times a test makes a job available before giving up on the waiter."""

QUEUE = "default"
"""The queue the waiter waits on, and in which each transition makes a job available."""


def wakes_on(harbor: Harbor, make_one_available: Callable[[int], object]) -> None:
    """Wait on :data:`QUEUE` in a thread, and call ``make_one_available(round)``
    until the waiter wakes; fail if it sleeps through :data:`ROUNDS` of them.

    The waiter may not be listening yet when the first job becomes available:
    a notifying driver wakes at the first one it hears.  The setup of a test
    must leave no job available in :data:`QUEUE` (so that a driver polling
    for ready jobs is not woken by the setup) and must be done before this.
    """
    woke_after: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        harbor.driver.wait_for_jobs([QUEUE], WAIT_SECONDS)
        woke_after.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    for number in range(ROUNDS):
        make_one_available(number)
        waiter.join(0.1)
        if not waiter.is_alive():
            break
    assert woke_after, f"wait_for_jobs still asleep after {ROUNDS} jobs became available"
    assert woke_after[0] < WAIT_SECONDS / 2


class WaitingRules(HarborFixture):
    @requires("notifications")
    def test_a_waiting_worker_wakes_up_on_enqueue(self, harbor: Harbor) -> None:
        wakes_on(harbor, lambda _: harbor.enqueue(queue=QUEUE))

    @requires("notifications")
    def test_a_waiting_worker_wakes_up_on_promote(self, harbor: Harbor) -> None:
        due = [
            harbor.enqueue(queue=QUEUE, run_at=harbor.later(n + 1)).run_at for n in range(ROUNDS)
        ]

        def promote(number: int) -> None:
            harbor.clock.set(due[number])
            assert harbor.driver.promote().promoted == 1

        wakes_on(harbor, promote)

    @requires("notifications")
    def test_a_waiting_worker_wakes_up_when_a_rescued_job_is_due(self, harbor: Harbor) -> None:
        # Each job's lease runs out ten seconds after the previous one's; a rescued
        # job waits in retrying for its retry delay (at most a second here).
        expiries: list[datetime | None] = []
        for job in [harbor.enqueue(queue=QUEUE) for _ in range(ROUNDS)]:
            leased = harbor.lease_job(job, lease_seconds=10.0 * (len(expiries) + 1))
            expiries.append(leased.lease_expires_at)

        def rescue(number: int) -> None:
            expiry = expiries[number]
            assert expiry is not None
            harbor.clock.set(expiry)
            (rescued,) = harbor.driver.rescue()
            harbor.clock.set(harbor.get(rescued).run_at)
            assert harbor.driver.promote().promoted == 1

        wakes_on(harbor, rescue)

    @requires("notifications")
    def test_a_waiting_worker_wakes_up_on_requeue(self, harbor: Harbor) -> None:
        dead = [harbor.job_in(JobState.DEAD, queue=QUEUE) for _ in range(ROUNDS)]
        wakes_on(harbor, lambda number: harbor.driver.requeue([dead[number].id]))

    @requires("notifications")
    def test_a_waiting_worker_wakes_up_on_release(self, harbor: Harbor) -> None:
        # Each chain's first step runs in another queue; finishing it releases
        # the second step into the waiter's queue.
        firsts = [
            harbor.get(
                harbor.chain(
                    EnqueueRequest("first", queue="dependency"),
                    EnqueueRequest("second", queue=QUEUE),
                ).steps[0]
            )
            for _ in range(ROUNDS)
        ]
        wakes_on(harbor, lambda number: harbor.finish(firsts[number]))


SETTLE_SECONDS = 0.2
"""How long a test lets a waiter begin its wait before it finishes the job."""

WAKE_BOUND = 5.0
"""How soon after a job finished its waiter must have returned: a notifying store
takes milliseconds; one that sleeps through the change takes :data:`WAIT_SECONDS`."""

SHORT_TIMEOUT = 0.3
"""The timeout of the test that lets a wait run out."""


def wakes_when_finished(
    harbor: Harbor, job_ids: Sequence[int], finish: Callable[[], object]
) -> None:
    """Wait for ``job_ids`` in a thread; once it has begun, ``finish()`` one of them;
    fail unless the waiter returns within :data:`WAKE_BOUND`."""
    waiter = threading.Thread(
        target=harbor.driver.wait_for_finished, args=(list(job_ids), WAIT_SECONDS), daemon=True
    )
    waiter.start()
    waiter.join(SETTLE_SECONDS)
    assert waiter.is_alive(), "wait_for_finished returned while none of the jobs had finished"
    finish()
    waiter.join(WAKE_BOUND)
    assert not waiter.is_alive(), f"wait_for_finished still asleep {WAKE_BOUND} s after the end"


class FinishedWaitingRules(HarborFixture):
    @requires("notifications")
    def test_a_waiter_wakes_when_its_job_succeeds(self, harbor: Harbor) -> None:
        job = harbor.running()
        wakes_when_finished(harbor, [job.id], lambda: harbor.complete(job))

    @requires("notifications")
    def test_a_waiter_wakes_when_its_job_ends_dead(self, harbor: Harbor) -> None:
        job = harbor.running()
        wakes_when_finished(harbor, [job.id], lambda: harbor.fail(job, permanent=True))

    @requires("notifications")
    def test_a_waiter_wakes_when_one_of_its_jobs_is_cancelled(self, harbor: Harbor) -> None:
        other, job = harbor.running(), harbor.enqueue(queue="other")
        wakes_when_finished(harbor, [other.id, job.id], lambda: harbor.driver.cancel([job.id]))

    @requires("notifications")
    def test_a_waiter_wakes_when_a_snooze_ends_a_cancel_request(self, harbor: Harbor) -> None:
        job = harbor.running()
        harbor.driver.cancel([job.id])  # asked to stop: still running
        snooze = SnoozeRequest(job.id, harbor.lease_ref(job).token, harbor.later(60))
        wakes_when_finished(harbor, [job.id], lambda: harbor.driver.snooze([snooze]))

    @requires("notifications")
    def test_a_waiter_wakes_when_its_rescued_job_ends_dead(self, harbor: Harbor) -> None:
        job = harbor.lease_job(harbor.enqueue(max_attempts=1))
        expiry = job.lease_expires_at
        assert expiry is not None

        def rescue() -> None:
            harbor.clock.set(expiry)
            assert harbor.driver.rescue() == [job.id]

        wakes_when_finished(harbor, [job.id], rescue)

    @requires("notifications")
    def test_a_waiter_on_a_pending_step_wakes_when_a_dependency_dies(self, harbor: Harbor) -> None:
        workflow = harbor.chain(EnqueueRequest("first"), EnqueueRequest("second", queue="later"))
        first = harbor.lease_job(harbor.get(workflow.steps[0]))
        wakes_when_finished(harbor, [workflow.steps[1]], lambda: harbor.fail(first, permanent=True))

    @requires("notifications")
    def test_a_waiter_on_a_step_wakes_when_its_workflow_is_cancelled(self, harbor: Harbor) -> None:
        workflow = harbor.chain(EnqueueRequest("first"), EnqueueRequest("second", queue="later"))
        wakes_when_finished(
            harbor, [workflow.steps[1]], lambda: harbor.driver.cancel_workflow(workflow.id)
        )

    @requires("notifications", "failure_callbacks")
    def test_a_waiter_on_a_failure_callback_wakes_when_its_workflow_succeeds(
        self, harbor: Harbor
    ) -> None:
        graph = WorkflowGraph(
            (StepSpec(EnqueueRequest("step")),), result=0, on_failure=EnqueueRequest("on_failure")
        )
        workflow = harbor.driver.enqueue_workflow(graph)
        assert workflow.on_failure is not None
        step = harbor.lease_job(harbor.get(workflow.steps[0]))
        wakes_when_finished(harbor, [workflow.on_failure], lambda: harbor.complete(step))

    @requires("notifications")
    @pytest.mark.parametrize("how", ["succeeded", "cancelled", "not stored"])
    def test_a_job_that_finished_before_the_wait_is_not_waited_for(
        self, harbor: Harbor, how: str
    ) -> None:
        job_id = 10**12 if how == "not stored" else harbor.job_in(JobState(how)).id
        started = time.monotonic()
        harbor.driver.wait_for_finished([job_id], WAIT_SECONDS)
        assert time.monotonic() - started < WAKE_BOUND

    @requires("notifications")
    def test_a_wait_for_unfinished_jobs_returns_at_its_timeout(self, harbor: Harbor) -> None:
        job = harbor.running()
        started = time.monotonic()
        harbor.driver.wait_for_finished([job.id], SHORT_TIMEOUT)
        waited = time.monotonic() - started
        assert SHORT_TIMEOUT * 0.8 <= waited < SHORT_TIMEOUT + WAKE_BOUND
        assert harbor.get(job.id).state is JobState.RUNNING

    @pytest.mark.parametrize(
        ("job_ids", "timeout"), [([], 0.0), ((1, "2"), 0.0), ([1], "soon"), ([1], float("nan"))]
    )
    def test_a_wait_for_finished_jobs_checks_its_arguments(
        self, harbor: Harbor, job_ids: Sequence[int], timeout: float
    ) -> None:
        with pytest.raises(InvalidRequest):
            harbor.driver.wait_for_finished(job_ids, timeout)
