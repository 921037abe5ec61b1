"""Rules of ``finished_per_minute`` (capability ``finished_counts``;
:mod:`taskharbor.spec.history`): how many jobs finished per minute, queue and outcome."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from taskharbor.spec import (
    MAX_HISTORY,
    EnqueueRequest,
    FinishedCount,
    InvalidRequest,
    JobState,
    SnoozeRequest,
    StepSpec,
    WorkflowGraph,
    minute_of,
)

from .harness import START, Harbor, HarborFixture, requires

MINUTE = timedelta(minutes=1)
SUCCEEDED, DEAD, CANCELLED = JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED


def at(harbor: Harbor, minutes: int, seconds: float = 0.0) -> datetime:
    """Move the clock to ``minutes`` whole minutes after the minute the test began in,
    plus ``seconds``, and return that instant."""
    moment = minute_of(START) + minutes * MINUTE + timedelta(seconds=seconds)
    harbor.clock.set(moment)
    return moment


def minute(minutes: int) -> datetime:
    """The start of the minute ``minutes`` after the one the test began in."""
    return minute_of(START) + minutes * MINUTE


def counted(harbor: Harbor, since: datetime, queue: str | None = None) -> list[tuple[object, ...]]:
    """The call's buckets as ``(minute offset, queue, state, count)``; each bucket is
    checked to be a :class:`FinishedCount` on a whole UTC minute."""
    found = harbor.driver.finished_per_minute(since, queue=queue)
    rows: list[tuple[object, ...]] = []
    for bucket in found:
        assert isinstance(bucket, FinishedCount)
        assert bucket.minute.utcoffset() == timedelta(0)
        assert bucket.minute == minute_of(bucket.minute)
        offset = (bucket.minute - minute(0)) // MINUTE
        rows.append((offset, bucket.queue, bucket.state, bucket.count))
    return rows


class FinishedCountRules(HarborFixture):
    @requires("finished_counts")
    def test_finished_counts_an_empty_store_counts_nothing(self, harbor: Harbor) -> None:
        assert harbor.driver.finished_per_minute(minute(0)) == []
        harbor.job_in(JobState.AVAILABLE, queue="q")
        assert harbor.driver.finished_per_minute(minute(0), queue="q") == []

    @requires("finished_counts")
    def test_finished_counts_jobs_are_counted_by_the_utc_minute_they_finished_in(
        self, harbor: Harbor
    ) -> None:
        for minutes, seconds in ((0, 1), (0, 59.999999), (1, 0), (3, 30), (3, 31)):
            at(harbor, minutes, seconds)
            harbor.job_in(SUCCEEDED, queue="q")
        at(harbor, 4, 10)
        assert counted(harbor, minute(0)) == [
            (0, "q", SUCCEEDED, 2),
            (1, "q", SUCCEEDED, 1),
            (3, "q", SUCCEEDED, 2),
        ]

    @requires("finished_counts")
    def test_finished_counts_since_is_inclusive(self, harbor: Harbor) -> None:
        at(harbor, 1, -0.000001)
        harbor.job_in(SUCCEEDED, queue="q")
        at(harbor, 1)
        harbor.job_in(DEAD, queue="q")
        at(harbor, 2, 5)
        assert counted(harbor, minute(1)) == [(1, "q", DEAD, 1)]
        assert counted(harbor, minute(0)) == [(0, "q", SUCCEEDED, 1), (1, "q", DEAD, 1)]
        assert counted(harbor, minute(2)) == []

    @requires("finished_counts")
    def test_finished_counts_every_outcome_is_counted_whichever_call_finished_the_job(
        self, harbor: Harbor
    ) -> None:
        at(harbor, 0, 5)
        harbor.job_in(SUCCEEDED, queue="q")
        harbor.job_in(DEAD, queue="q")  # fail, permanent
        harbor.job_in(CANCELLED, queue="q")  # cancel while available
        last = harbor.lease_job(harbor.enqueue(queue="q", max_attempts=1))
        harbor.fail(last)  # fail, attempts exhausted
        snoozed = harbor.running(queue="q")
        harbor.driver.cancel([snoozed.id])
        assert snoozed.lease_token is not None
        snooze = SnoozeRequest(snoozed.id, snoozed.lease_token, harbor.later(60))
        assert harbor.driver.snooze([snooze]) == []  # snooze, cancel requested
        expired = harbor.running(queue="q", max_attempts=1)
        at(harbor, 1, 5)
        assert harbor.driver.rescue() == [expired.id]  # lease_expired, attempts exhausted
        assert counted(harbor, minute(0)) == [
            (0, "q", CANCELLED, 2),
            (0, "q", DEAD, 2),
            (0, "q", SUCCEEDED, 1),
            (1, "q", DEAD, 1),
        ]

    @requires("finished_counts")
    def test_finished_counts_unfinished_jobs_are_not_counted(self, harbor: Harbor) -> None:
        at(harbor, 0, 5)
        for state in (
            JobState.PENDING,
            JobState.SCHEDULED,
            JobState.AVAILABLE,
            JobState.RUNNING,
            JobState.RETRYING,
        ):
            harbor.job_in(state, queue=f"q-{state.value}")
        at(harbor, 1, 5)
        assert counted(harbor, minute(0)) == []

    @requires("finished_counts")
    def test_finished_counts_a_requeued_job_counts_as_what_it_is_now_when_it_finished_last(
        self, harbor: Harbor
    ) -> None:
        at(harbor, 0, 5)
        job = harbor.job_in(DEAD, queue="q")
        at(harbor, 2, 5)
        harbor.driver.requeue([job.id])
        assert counted(harbor, minute(0)) == []
        at(harbor, 3, 5)
        harbor.finish(harbor.get(job.id))
        assert counted(harbor, minute(0)) == [(3, "q", SUCCEEDED, 1)]

    @requires("finished_counts")
    def test_finished_counts_a_dead_job_cancelled_counts_as_cancelled_in_the_minute_it_died(
        self, harbor: Harbor
    ) -> None:
        at(harbor, 0, 5)
        job = harbor.job_in(DEAD, queue="q")
        at(harbor, 2, 5)
        harbor.driver.cancel([job.id])
        assert counted(harbor, minute(0)) == [(0, "q", CANCELLED, 1)]

    @requires("finished_counts")
    def test_finished_counts_workflow_steps_and_their_cascades_are_counted(
        self, harbor: Harbor
    ) -> None:
        at(harbor, 0, 5)
        ok = harbor.chain(EnqueueRequest("a", queue="steps"), EnqueueRequest("b", queue="steps"))
        for step in ok.steps:
            harbor.finish(harbor.get(step))
        graph = WorkflowGraph(
            (
                StepSpec(EnqueueRequest("first", queue="fails")),
                StepSpec(EnqueueRequest("second", queue="after"), after=(0,)),
                StepSpec(EnqueueRequest("third", queue="after"), after=(1,)),
            ),
            result=2,
        )
        failing = harbor.driver.enqueue_workflow(graph)
        at(harbor, 1, 5)
        harbor.fail(harbor.lease_job(harbor.get(failing.steps[0])), permanent=True)
        assert counted(harbor, minute(0)) == [
            (0, "steps", SUCCEEDED, 2),
            (1, "after", CANCELLED, 2),
            (1, "fails", DEAD, 1),
        ]

    @requires("finished_counts")
    def test_finished_counts_buckets_come_by_minute_then_queue_then_state(
        self, harbor: Harbor
    ) -> None:
        at(harbor, 1, 1)
        harbor.job_in(SUCCEEDED, queue="c")
        harbor.job_in(CANCELLED, queue="c")
        at(harbor, 2, 1)
        harbor.job_in(SUCCEEDED, queue="b")
        harbor.job_in(SUCCEEDED, queue="a")
        harbor.job_in(DEAD, queue="a")
        at(harbor, 3, 1)
        assert counted(harbor, minute(0)) == [
            (1, "c", CANCELLED, 1),
            (1, "c", SUCCEEDED, 1),
            (2, "a", DEAD, 1),
            (2, "a", SUCCEEDED, 1),
            (2, "b", SUCCEEDED, 1),
        ]

    @requires("finished_counts")
    def test_finished_counts_queue_selects_one_queues_jobs(self, harbor: Harbor) -> None:
        at(harbor, 0, 5)
        harbor.job_in(SUCCEEDED, queue="mail")
        harbor.job_in(DEAD, queue="mail")
        harbor.job_in(SUCCEEDED, queue="other")
        assert counted(harbor, minute(0), queue="mail") == [
            (0, "mail", DEAD, 1),
            (0, "mail", SUCCEEDED, 1),
        ]
        assert counted(harbor, minute(0), queue="other") == [(0, "other", SUCCEEDED, 1)]
        assert counted(harbor, minute(0), queue="none") == []

    @requires("finished_counts")
    def test_finished_counts_pruned_jobs_are_no_longer_counted(self, harbor: Harbor) -> None:
        at(harbor, 0, 5)
        harbor.job_in(SUCCEEDED, queue="q")
        harbor.job_in(DEAD, queue="q")
        at(harbor, 5, 5)
        harbor.job_in(SUCCEEDED, queue="q")
        assert harbor.driver.prune(minute(1)) == 1
        assert counted(harbor, minute(0)) == [(0, "q", DEAD, 1), (5, "q", SUCCEEDED, 1)]
        assert harbor.driver.prune(minute(1), {DEAD}) == 1
        assert counted(harbor, minute(0)) == [(5, "q", SUCCEEDED, 1)]
        assert harbor.driver.prune(harbor.later(1), {SUCCEEDED}, dry_run=True) == 1
        assert counted(harbor, minute(0)) == [(5, "q", SUCCEEDED, 1)]

    @requires("finished_counts")
    def test_finished_counts_since_is_an_instant_in_any_timezone(self, harbor: Harbor) -> None:
        at(harbor, 0, 5)
        harbor.job_in(SUCCEEDED, queue="q")
        at(harbor, 1, 5)
        harbor.job_in(SUCCEEDED, queue="q")
        east = minute(1).astimezone(timezone(timedelta(hours=5, minutes=30)))
        assert counted(harbor, east) == [(1, "q", SUCCEEDED, 1)]

    @requires("finished_counts")
    def test_finished_counts_since_may_reach_back_as_far_as_max_history(
        self, harbor: Harbor
    ) -> None:
        at(harbor, 0, 30)
        harbor.job_in(SUCCEEDED, queue="q")
        at(harbor, 0, MAX_HISTORY.total_seconds())  # exactly MAX_HISTORY after minute 0
        assert counted(harbor, minute(0)) == [(0, "q", SUCCEEDED, 1)]
        now = at(harbor, 0, MAX_HISTORY.total_seconds() + 0.000001)
        with pytest.raises(InvalidRequest, match="since"):
            harbor.driver.finished_per_minute(minute(0))
        assert harbor.driver.finished_per_minute(minute_of(now)) == []

    @requires("finished_counts")
    def test_finished_counts_since_must_be_an_aware_whole_minute_not_in_the_future(
        self, harbor: Harbor
    ) -> None:
        now = at(harbor, 3, 5)
        bad: list[object] = [
            minute(1).replace(tzinfo=None),  # naive
            minute(1) + timedelta(seconds=1),
            minute(1) + timedelta(microseconds=1),
            minute(4),  # after now
            "2030-01-01T12:00:00+00:00",
            None,
        ]
        for since in bad:
            with pytest.raises(InvalidRequest, match="since"):
                harbor.driver.finished_per_minute(since)  # type: ignore[arg-type]
        assert harbor.driver.finished_per_minute(minute_of(now)) == []
        for queue in ("", 7):
            with pytest.raises(InvalidRequest, match="queue"):
                harbor.driver.finished_per_minute(minute(1), queue=queue)  # type: ignore[arg-type]
