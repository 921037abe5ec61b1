"""Rules of ``Driver.wait_for_jobs`` that a driver's capabilities promise.

A driver that declares ``notifications`` wakes its waiters on every
transition into ``available``, not only on enqueue: ``promote``, ``rescue``,
``requeue`` and a workflow step's ``release`` make a job ready just as well,
and a worker that sleeps through them waits a whole poll for nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

from taskharbor.spec import EnqueueRequest, JobState

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
