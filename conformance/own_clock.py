"""The "one instant per call" rules, on the driver's own clock.

Every other group gives the driver a :class:`~taskharbor.spec.FakeClock`, so
a driver that reads the time per row instead of once per call passes them:
the fake clock answers the same instant however often it is asked.  A store's
own clock moves between two reads (the machine's clock for an embedded store,
the server's for PostgreSQL, ``TIME`` for Redis), so these tests build the
driver on it and check what can be checked without knowing the time: every
timestamp one call writes is the same instant, what a call returns is what
``get`` reads after it, and an error's ``at`` is the instant of its transition.

The ``own_clock_driver`` fixture calls ``driver_factory(None)``: ``None``
asks the factory for the driver's default clock, which is what
``MyDriver(clock=None)`` gives for every shipped driver.  A driver whose
default clock is built otherwise overrides ``own_clock_driver``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest

from taskharbor.spec import (
    Clock,
    Completion,
    Driver,
    EnqueueRequest,
    Failure,
    JobRecord,
    JobState,
    LeaseRef,
    StepSpec,
    WorkflowGraph,
)

from .harness import BOOM, LEASE_SECONDS, WORKER, skip_unless_capable

OwnClockFactory = Callable[[Clock | None], Driver]
"""A ``driver_factory`` asked for ``None``: a fresh store on the driver's default clock."""

BATCH = 3
"""Jobs per call: enough for a per-row clock read to show two different instants."""


def one_instant(values: list[datetime | None]) -> datetime:
    """The one instant all ``values`` are; fails naming them when they differ or are unset."""
    assert values and None not in values, f"expected timestamps, got {values}"
    assert len(set(values)) == 1, f"one call wrote {len(set(values))} different instants: {values}"
    instant = values[0]
    assert instant is not None
    return instant


def stored(driver: Driver, jobs: list[JobRecord]) -> list[JobRecord]:
    return driver.get([job.id for job in jobs])


def enqueue_batch(driver: Driver, size: int = BATCH) -> list[JobRecord]:
    results = driver.enqueue([EnqueueRequest("task", args=(index,)) for index in range(size)])
    return [result.job for result in results]


def lease_batch(driver: Driver, size: int = BATCH) -> list[JobRecord]:
    enqueue_batch(driver, size)
    leased = driver.lease(["default"], size, LEASE_SECONDS, WORKER)
    assert len(leased) == size
    return leased


class OwnClockRules:
    @pytest.fixture
    def own_clock_driver(
        self, driver_factory: OwnClockFactory, request: pytest.FixtureRequest
    ) -> Driver:
        """A fresh store from ``driver_factory(None)``, on its own clock, schema migrated."""
        driver = driver_factory(None)
        skip_unless_capable(driver, request.function)
        driver.migrate()
        return driver

    def test_an_enqueue_batch_is_written_at_one_instant_on_the_own_clock(
        self, own_clock_driver: Driver
    ) -> None:
        jobs = enqueue_batch(own_clock_driver)
        created = one_instant([job.created_at for job in jobs])
        assert [job.run_at for job in jobs] == [created] * BATCH
        assert stored(own_clock_driver, jobs) == jobs

    def test_a_lease_batch_is_written_at_one_instant_on_the_own_clock(
        self, own_clock_driver: Driver
    ) -> None:
        leased = lease_batch(own_clock_driver)
        one_instant([job.lease_expires_at for job in leased])
        assert stored(own_clock_driver, leased) == leased

    def test_a_heartbeat_batch_extends_leases_to_one_instant_on_the_own_clock(
        self, own_clock_driver: Driver
    ) -> None:
        leased = lease_batch(own_clock_driver)
        refs = [LeaseRef(job.id, _token(job)) for job in leased]
        result = own_clock_driver.heartbeat(refs, lease_seconds=2 * LEASE_SECONDS)
        assert result.lost == ()
        extended = one_instant([job.lease_expires_at for job in stored(own_clock_driver, leased)])
        assert extended > one_instant([job.lease_expires_at for job in leased])

    def test_a_completion_batch_finishes_at_one_instant_on_the_own_clock(
        self, own_clock_driver: Driver
    ) -> None:
        leased = lease_batch(own_clock_driver)
        completions = [Completion(job.id, _token(job), job.args[0]) for job in leased]
        assert own_clock_driver.complete(completions) == []
        done = stored(own_clock_driver, leased)
        assert {job.state for job in done} == {JobState.SUCCEEDED}
        one_instant([job.finished_at for job in done])

    def test_a_failure_batch_records_each_error_at_its_transition_on_the_own_clock(
        self, own_clock_driver: Driver
    ) -> None:
        dead, retrying, *rest = lease_batch(own_clock_driver)
        failures = [
            Failure(dead.id, _token(dead), BOOM, permanent=True),
            Failure(retrying.id, _token(retrying), BOOM),
            *(Failure(job.id, _token(job), BOOM, permanent=True) for job in rest),
        ]
        assert own_clock_driver.fail(failures) == []
        after = {job.id: job for job in stored(own_clock_driver, [dead, retrying, *rest])}
        assert after[retrying.id].state is JobState.RETRYING
        instant = one_instant([job.errors[-1].at for job in after.values()])
        assert after[retrying.id].run_at == instant  # retry_at None: due at once
        for job in (dead, *rest):
            assert after[job.id].state is JobState.DEAD
            assert after[job.id].finished_at == instant

    def test_a_cancel_batch_returns_what_get_reads_on_the_own_clock(
        self, own_clock_driver: Driver
    ) -> None:
        jobs = enqueue_batch(own_clock_driver)
        cancelled = own_clock_driver.cancel([job.id for job in jobs])
        one_instant([job.finished_at for job in cancelled])
        assert stored(own_clock_driver, jobs) == cancelled

    def test_a_requeue_batch_returns_what_get_reads_on_the_own_clock(
        self, own_clock_driver: Driver
    ) -> None:
        jobs = enqueue_batch(own_clock_driver)
        own_clock_driver.cancel([job.id for job in jobs])
        requeued = own_clock_driver.requeue([job.id for job in jobs])
        one_instant([job.run_at for job in requeued])
        assert stored(own_clock_driver, jobs) == requeued

    def test_a_workflow_is_written_at_one_instant_on_the_own_clock(
        self, own_clock_driver: Driver
    ) -> None:
        graph = WorkflowGraph(
            (
                StepSpec(EnqueueRequest("first")),
                StepSpec(EnqueueRequest("second"), after=(0,), input=0),
                StepSpec(EnqueueRequest("third"), after=(0,)),
            ),
            result=1,
        )
        workflow = own_clock_driver.enqueue_workflow(graph)
        steps = own_clock_driver.get(list(workflow.steps))
        assert one_instant([step.created_at for step in steps]) == workflow.created_at
        assert own_clock_driver.get_workflow(workflow.id) == workflow
        (first,) = own_clock_driver.lease(["default"], 1, LEASE_SECONDS, WORKER)
        assert own_clock_driver.complete([Completion(first.id, _token(first), 7)]) == []
        done, *released = own_clock_driver.get(list(workflow.steps))
        assert [step.state for step in released] == [JobState.AVAILABLE] * 2
        assert one_instant([step.run_at for step in released]) == done.finished_at


def _token(job: JobRecord) -> str:
    assert job.lease_token is not None, f"job {job.id} is not leased"
    return job.lease_token
