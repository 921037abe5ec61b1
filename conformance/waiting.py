"""Rules of ``Driver.wait_for_jobs`` that a driver's capabilities promise."""

from __future__ import annotations

import threading
import time

from .harness import Harbor, HarborFixture, requires

WAIT_SECONDS = 30.0
"""How long the waiter is willing to wait: far longer than a wake-up may take."""


class WaitingRules(HarborFixture):
    @requires("notifications")
    def test_a_waiting_worker_wakes_up_on_enqueue(self, harbor: Harbor) -> None:
        woke_after: list[float] = []

        def wait() -> None:
            started = time.monotonic()
            harbor.driver.wait_for_jobs(["default"], WAIT_SECONDS)
            woke_after.append(time.monotonic() - started)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        # The waiter may not be listening yet when a job lands: keep enqueueing
        # until it wakes, which a notifying driver does at the first job it hears.
        for _ in range(50):
            harbor.enqueue()
            waiter.join(0.1)
            if not waiter.is_alive():
                break
        assert woke_after, "wait_for_jobs still asleep after 50 enqueues"
        assert woke_after[0] < WAIT_SECONDS / 2
