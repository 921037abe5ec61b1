"""Rules for a store that fails or holds data the driver cannot read.

Both need a hook only the driver's own tests can give (see
:class:`~taskharbor.conformance.harness.DriverHooks`): ``plant_corrupt_job``
damages a stored job, ``fail_next_call`` makes the next call fail as a lost
connection would.  A driver without the hook has these tests skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from taskharbor.spec import (
    DEFAULT_RETRY,
    Completion,
    CorruptJob,
    Failure,
    JobFilter,
    JobRecord,
    JobState,
    LeaseLost,
    SnoozeRequest,
    is_refusal,
)

from .harness import (
    BOOM,
    DriverHooks,
    FailNextCall,
    Harbor,
    HarborFixture,
    PlantCorruptJob,
    hook,
)

QUEUE = "damaged"


class CorruptDataRules(HarborFixture, DriverHooks):
    """A job whose stored data cannot be decoded is named, dead-lettered at
    lease, and never stops the calls that do not need to decode it."""

    def test_reading_a_corrupt_job_raises_corrupt_job_naming_it(
        self, harbor: Harbor, plant_corrupt_job: PlantCorruptJob | None
    ) -> None:
        plant = hook(plant_corrupt_job, "plant_corrupt_job")
        good, bad = harbor.enqueue(queue=QUEUE), harbor.enqueue(queue=QUEUE)
        plant(harbor.driver, bad.id)
        reads: list[Callable[[], object]] = [
            lambda: harbor.driver.get([bad.id]),
            lambda: harbor.driver.get([good.id, bad.id]),
            lambda: harbor.driver.list_jobs(JobFilter(queue=QUEUE)),
        ]
        for read in reads:
            with pytest.raises(CorruptJob) as refused:
                read()
            assert refused.value.job_id == bad.id
            assert f"job {bad.id} " in str(refused.value)
        assert harbor.driver.get([good.id]) == [good]
        assert harbor.driver.list_jobs(JobFilter(queue=QUEUE, limit=1)) == [good]

    def test_a_corrupt_job_is_dead_lettered_at_lease_and_the_rest_is_handed_out(
        self, harbor: Harbor, plant_corrupt_job: PlantCorruptJob | None
    ) -> None:
        plant = hook(plant_corrupt_job, "plant_corrupt_job")
        first, bad, last = (harbor.enqueue(queue=QUEUE) for _ in range(3))
        plant(harbor.driver, bad.id)
        leased = harbor.lease([QUEUE], limit=3)
        assert [job.id for job in leased] == [first.id, last.id]
        assert dict(harbor.driver.count()) == {
            (QUEUE, JobState.RUNNING): 2,
            (QUEUE, JobState.DEAD): 1,
        }
        assert harbor.lease([QUEUE], limit=3) == []

    def test_rescue_promote_and_count_never_stop_on_a_corrupt_job(
        self, harbor: Harbor, plant_corrupt_job: PlantCorruptJob | None
    ) -> None:
        plant = hook(plant_corrupt_job, "plant_corrupt_job")
        running = harbor.running(queue=QUEUE)
        scheduled = harbor.enqueue(queue=QUEUE, run_at=harbor.later(10))
        plant(harbor.driver, running.id)
        plant(harbor.driver, scheduled.id)
        harbor.advance(60)
        assert harbor.driver.rescue() == [running.id]
        harbor.advance(DEFAULT_RETRY.cap)  # past the rescued job's retry delay
        assert harbor.driver.promote().promoted == 2
        assert dict(harbor.driver.count()) == {(QUEUE, JobState.AVAILABLE): 2}


def send_report(harbor: Harbor, report: str, job: JobRecord) -> list[LeaseLost]:
    """One fenced report a worker sends (``complete``, ``fail`` or ``snooze``) for ``job``."""
    ref = harbor.lease_ref(job)
    if report == "complete":
        return harbor.driver.complete([Completion(ref.job_id, ref.token, "done")])
    if report == "fail":
        return harbor.driver.fail([Failure(ref.job_id, ref.token, BOOM, permanent=True)])
    return harbor.driver.snooze([SnoozeRequest(ref.job_id, ref.token, harbor.later(60))])


REPORTED = {"complete": JobState.SUCCEEDED, "fail": JobState.DEAD, "snooze": JobState.SCHEDULED}


class TransientFailureRules(HarborFixture, DriverHooks):
    """A call that fails because the store could not be reached is raised as a
    transient error (a ``StoreError``, or not a ``TaskHarborError`` at all),
    never as a refusal, so the worker sends it again and no report is lost."""

    @pytest.mark.parametrize("report", sorted(REPORTED))
    def test_a_report_that_failed_on_the_way_is_retryable_and_the_retry_applies(
        self, harbor: Harbor, fail_next_call: FailNextCall | None, report: str
    ) -> None:
        fail = hook(fail_next_call, "fail_next_call")
        job = harbor.running()
        fail(harbor.driver)
        with pytest.raises(Exception) as failed:
            send_report(harbor, report, job)
        assert not is_refusal(failed.value), (
            f"a transient failure was raised as {type(failed.value).__name__}, which means "
            "'refused': the worker would drop the report"
        )
        assert send_report(harbor, report, job) == []
        assert harbor.get(job.id).state is REPORTED[report]

    def test_a_lease_that_failed_on_the_way_is_retryable(
        self, harbor: Harbor, fail_next_call: FailNextCall | None
    ) -> None:
        fail = hook(fail_next_call, "fail_next_call")
        job = harbor.enqueue()
        fail(harbor.driver)
        with pytest.raises(Exception) as failed:
            harbor.lease()
        assert not is_refusal(failed.value)
        assert [leased.id for leased in harbor.lease()] == [job.id]
