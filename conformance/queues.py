"""Rules of paused queues (:mod:`taskharbor.spec.queues`): what a pause stops, and what not.

Every test here needs the ``queue_pause`` capability.  A pause stops ``lease``
only: jobs keep coming in, due jobs keep being promoted, running jobs keep
reporting, and resuming hands the waiting jobs out in the usual lease order.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from taskharbor.spec import InvalidRequest, JobState
from taskharbor.spec.queues import QueueRecord

from .harness import Harbor, HarborFixture, requires
from .waiting import QUEUE, wakes_on

NOT_WOKEN_SECONDS = 0.5
"""How long a wait on a paused queue with a ready job is asked to last (a lower bound)."""


def pause(harbor: Harbor, *queues: str) -> list[QueueRecord]:
    return harbor.driver.pause_queues(list(queues), True)


def resume(harbor: Harbor, *queues: str) -> list[QueueRecord]:
    return harbor.driver.pause_queues(list(queues), False)


def leased_ids(harbor: Harbor, queues: list[str], limit: int = 10) -> list[int]:
    return [job.id for job in harbor.lease(queues, limit=limit)]


class QueuePauseRules(HarborFixture):
    def test_a_paused_queue_is_not_leased_while_the_others_are(self, harbor: Harbor) -> None:
        held = harbor.enqueue(queue="a", priority=9)
        other = harbor.enqueue(queue="b")
        pause(harbor, "a")
        assert leased_ids(harbor, ["a"]) == []
        assert leased_ids(harbor, ["a", "b"], limit=1) == [other.id]
        assert harbor.get(held.id).state == JobState.AVAILABLE

    def test_a_pause_takes_no_part_of_the_limit(self, harbor: Harbor) -> None:
        for _ in range(3):
            harbor.enqueue(queue="a", priority=5)
        others = [harbor.enqueue(queue="b").id for _ in range(2)]
        pause(harbor, "a")
        assert leased_ids(harbor, ["a", "b"], limit=2) == others

    def test_enqueue_into_a_paused_queue_is_accepted(self, harbor: Harbor) -> None:
        pause(harbor, "a")
        job = harbor.enqueue(queue="a")
        assert job.state == JobState.AVAILABLE
        assert harbor.driver.count() == {("a", JobState.AVAILABLE): 1}

    def test_due_jobs_of_a_paused_queue_are_promoted_but_not_leased(self, harbor: Harbor) -> None:
        scheduled = harbor.enqueue(queue="a", run_at=harbor.later(10))
        retrying = harbor.job_in(JobState.RETRYING, queue="a")
        pause(harbor, "a")
        harbor.clock.set(max(scheduled.run_at, harbor.get(retrying.id).run_at))
        assert harbor.driver.promote().promoted == 2
        assert {harbor.get(j.id).state for j in (scheduled, retrying)} == {JobState.AVAILABLE}
        assert leased_ids(harbor, ["a"]) == []

    def test_resume_hands_the_jobs_out_in_lease_order(self, harbor: Harbor) -> None:
        low = harbor.enqueue(queue="a")
        high = harbor.enqueue(queue="a", priority=3)
        pause(harbor, "a")
        assert leased_ids(harbor, ["a"]) == []
        assert resume(harbor, "a") == [QueueRecord("a")]
        assert leased_ids(harbor, ["a"]) == [high.id, low.id]

    def test_running_jobs_of_a_paused_queue_report_and_are_rescued(self, harbor: Harbor) -> None:
        done = harbor.running(queue="a")
        failing = harbor.running(queue="a", max_attempts=3)
        lost = harbor.running(queue="a", max_attempts=3)
        pause(harbor, "a")
        harbor.complete(done)
        harbor.fail(failing)
        assert harbor.get(done.id).state == JobState.SUCCEEDED
        assert harbor.get(failing.id).state == JobState.RETRYING
        assert harbor.driver.heartbeat([harbor.lease_ref(lost)], 30.0).lost == ()
        assert lost.lease_expires_at is not None
        harbor.clock.set(lost.lease_expires_at)
        assert harbor.driver.rescue() == [lost.id]
        harbor.clock.set(harbor.get(lost.id).run_at)
        harbor.driver.promote()
        assert harbor.get(lost.id).state == JobState.AVAILABLE
        assert leased_ids(harbor, ["a"]) == []

    def test_a_pause_is_stored_with_its_instant_and_listed_by_name(self, harbor: Harbor) -> None:
        first = harbor.now()
        assert pause(harbor, "b", "a") == [QueueRecord("b", first), QueueRecord("a", first)]
        harbor.advance(5)
        # pausing again keeps the first instant, and an empty queue may be paused
        assert pause(harbor, "a", "c") == [QueueRecord("a", first), QueueRecord("c", harbor.now())]
        assert harbor.driver.paused_queues() == [
            QueueRecord("a", first),
            QueueRecord("b", first),
            QueueRecord("c", harbor.now()),
        ]
        assert all(record.paused for record in harbor.driver.paused_queues())

    def test_resume_forgets_the_pause_and_a_queue_never_paused_is_left_as_it_is(
        self, harbor: Harbor
    ) -> None:
        pause(harbor, "a", "b")
        assert resume(harbor, "a", "never") == [QueueRecord("a"), QueueRecord("never")]
        assert [record.name for record in harbor.driver.paused_queues()] == ["b"]
        harbor.advance(1)
        assert pause(harbor, "a") == [QueueRecord("a", harbor.now())]

    @pytest.mark.parametrize(
        ("queues", "paused", "match"),
        [
            ([], True, "empty batch"),
            (["a", "a"], True, "appears twice"),
            (["a", ""], True, "queue name"),
            (["a", 3], True, "queue name"),
            ("a", True, "empty batch"),
            (["a"], 1, "paused must be a bool"),
            (["a"], None, "paused must be a bool"),
        ],
    )
    def test_a_bad_call_is_refused_and_changes_nothing(
        self, harbor: Harbor, queues: Any, paused: Any, match: str
    ) -> None:
        pause(harbor, "b")
        with pytest.raises(InvalidRequest, match=match):
            harbor.driver.pause_queues(queues, paused)
        assert [record.name for record in harbor.driver.paused_queues()] == ["b"]

    def test_a_wait_on_a_paused_queue_is_not_cut_short_by_its_ready_jobs(
        self, harbor: Harbor
    ) -> None:
        harbor.enqueue(queue=QUEUE)
        pause(harbor, QUEUE)
        started = time.monotonic()
        harbor.driver.wait_for_jobs([QUEUE], NOT_WOKEN_SECONDS)
        assert time.monotonic() - started >= NOT_WOKEN_SECONDS * 0.9

    @requires("notifications")
    def test_a_waiting_worker_wakes_up_on_resume(self, harbor: Harbor) -> None:
        harbor.enqueue(queue=QUEUE)
        pause(harbor, QUEUE)

        def resume_again(number: int) -> None:
            if number:
                pause(harbor, QUEUE)
            resume(harbor, QUEUE)

        wakes_on(harbor, resume_again)


for _name, _test in list(vars(QueuePauseRules).items()):
    if _name.startswith("test_"):
        requires("queue_pause", *getattr(_test, "__taskharbor_requires__", ()))(_test)
