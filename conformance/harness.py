"""What every conformance test stands on: a driver under test, its clock, and short helpers.

Each test gets a fresh :class:`Harbor` from the ``harbor`` fixture: a new, empty
store made by the ``driver_factory`` fixture around a :class:`FakeClock` that
starts at :data:`START`.  Time moves only when a test says so, so every
timestamp a driver writes can be compared exactly (``START`` has microseconds:
a driver must keep them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from taskharbor.spec import (
    Capabilities,
    Clock,
    Completion,
    Driver,
    EnqueueRequest,
    ErrorReport,
    Failure,
    FakeClock,
    InvalidRequest,
    JobFilter,
    JobRecord,
    JobState,
    LeaseRef,
    StepSpec,
    WorkflowGraph,
    WorkflowRecord,
)

START = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
"""Where every test's clock starts."""

LEASE_SECONDS = 30.0
"""The lease duration the helpers ask for unless a test says otherwise."""

WORKER = "worker-1"
"""The ``worker_id`` the helpers lease with."""

BOOM = ErrorReport(type="RuntimeError", message="boom", traceback="Traceback: boom")
"""The error the helpers report when a test needs a failed attempt."""

DriverFactory = Callable[[Clock], Driver]

_Test = TypeVar("_Test", bound=Callable[..., Any])

_REQUIRED = "__taskharbor_requires__"
_CAPABILITIES = frozenset(field.name for field in dataclasses.fields(Capabilities))


def requires(*capabilities: str) -> Callable[[_Test], _Test]:
    """Mark a test as applying only to drivers that declare ``capabilities``.

    The ``harbor`` fixture skips the test, naming the missing capability, for
    a driver whose :class:`~taskharbor.spec.Capabilities` lacks one of them.
    """
    unknown = sorted(set(capabilities) - _CAPABILITIES)
    if unknown:
        raise InvalidRequest(f"unknown capabilities {unknown}; known: {sorted(_CAPABILITIES)}")

    def mark(test: _Test) -> _Test:
        setattr(test, _REQUIRED, capabilities)
        return test

    return mark


def skip_unless_capable(driver: Driver, test: object) -> None:
    """Skip ``test`` when ``driver`` lacks a capability the test was marked with."""
    for capability in getattr(test, _REQUIRED, ()):
        if not getattr(driver.capabilities, capability):
            pytest.skip(f"{type(driver).__name__} does not declare capability {capability!r}")


class Harbor:
    """A driver under test, its clock, and short ways to bring jobs into each state."""

    def __init__(self, driver: Driver, clock: FakeClock) -> None:
        self.driver = driver
        self.clock = clock

    # -- time -------------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock.now()

    def later(self, seconds: float) -> datetime:
        """``seconds`` after now, without moving the clock."""
        return self.clock.now() + timedelta(seconds=seconds)

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward and return the new now."""
        return self.clock.advance(seconds)

    # -- producing ----------------------------------------------------------------

    def enqueue(self, task: str = "task", **fields: Any) -> JobRecord:
        """Enqueue one job (fields as :class:`EnqueueRequest`'s) and return it as stored."""
        (result,) = self.driver.enqueue([EnqueueRequest(task=task, **fields)])
        assert result.created, "a request without idempotency key must create a job"
        return result.job

    def chain(self, *requests: EnqueueRequest) -> WorkflowRecord:
        """A workflow where each step waits for the previous one and takes its result."""
        steps = [StepSpec(requests[0])]
        steps.extend(
            StepSpec(request, after=(index - 1,), input=index - 1)
            for index, request in enumerate(requests[1:], start=1)
        )
        return self.driver.enqueue_workflow(WorkflowGraph(tuple(steps), result=len(steps) - 1))

    # -- consuming ----------------------------------------------------------------

    def lease(
        self,
        queues: Sequence[str] = ("default",),
        limit: int = 1,
        lease_seconds: float = LEASE_SECONDS,
        worker_id: str = WORKER,
    ) -> list[JobRecord]:
        return self.driver.lease(list(queues), limit, lease_seconds, worker_id)

    def lease_job(self, job: JobRecord, lease_seconds: float = LEASE_SECONDS) -> JobRecord:
        """Lease from ``job``'s queue and check that ``job`` is the one leased."""
        leased = self.lease([job.queue], lease_seconds=lease_seconds)
        assert [record.id for record in leased] == [job.id], f"expected to lease job {job.id}"
        return leased[0]

    def running(self, task: str = "task", **fields: Any) -> JobRecord:
        """Enqueue a job and lease it; it is alone in its queue, so it is the one leased."""
        return self.lease_job(self.enqueue(task, **fields))

    def complete(self, job: JobRecord, result: Any = None) -> None:
        """Report success for a leased job; the lease must be live."""
        assert job.lease_token is not None, f"job {job.id} is not leased"
        assert self.driver.complete([Completion(job.id, job.lease_token, result)]) == []

    def fail(
        self, job: JobRecord, *, retry_at: datetime | None = None, permanent: bool = False
    ) -> None:
        """Report a failed attempt for a leased job; the lease must be live."""
        assert job.lease_token is not None, f"job {job.id} is not leased"
        failure = Failure(job.id, job.lease_token, BOOM, retry_at=retry_at, permanent=permanent)
        assert self.driver.fail([failure]) == []

    def finish(self, job: JobRecord, result: Any = None) -> None:
        """Lease ``job`` (it must be the next one of its queue) and complete it."""
        self.complete(self.lease_job(job), result)

    # -- any state ------------------------------------------------------------------

    def job_in(self, state: JobState, queue: str | None = None, **fields: Any) -> JobRecord:
        """A new job brought to ``state`` through the driver, alone in its own queue.

        ``fields`` go to the job's :class:`EnqueueRequest` (not for ``pending``,
        which is the second step of a new two-step chain; the first step waits,
        available, in ``<queue>-dependency``).
        """
        queue = queue or f"queue-{state.value}"
        if state is JobState.PENDING:
            workflow = self.chain(
                EnqueueRequest("first", queue=f"{queue}-dependency"),
                EnqueueRequest("second", queue=queue),
            )
            return self.get(workflow.steps[1])
        if state is JobState.SCHEDULED:
            fields.setdefault("run_at", self.later(3600))
        job = self.enqueue(queue=queue, **fields)
        if state in (JobState.SCHEDULED, JobState.AVAILABLE):
            return job
        if state is JobState.CANCELLED:
            self.driver.cancel([job.id])
            return self.get(job.id)
        leased = self.lease_job(job)
        if state is JobState.RETRYING:
            self.fail(leased, retry_at=self.later(3600))
        elif state is JobState.DEAD:
            self.fail(leased, permanent=True)
        elif state is JobState.SUCCEEDED:
            self.complete(leased, result="done")
        return self.get(job.id)

    # -- reading --------------------------------------------------------------------

    def get(self, job_id: int) -> JobRecord:
        (record,) = self.driver.get([job_id])
        return record

    def all_jobs(self) -> list[JobRecord]:
        return self.driver.list_jobs(JobFilter(limit=100_000))

    def snapshot(self) -> tuple[list[JobRecord], dict[tuple[str, JobState], int]]:
        """Everything a test can observe of the jobs: to check a call changed nothing."""
        return self.all_jobs(), dict(self.driver.count())

    def lease_ref(self, job: JobRecord) -> LeaseRef:
        assert job.lease_token is not None, f"job {job.id} is not leased"
        return LeaseRef(job.id, job.lease_token)


PlantCorruptJob = Callable[[Driver, int], None]
"""A driver hook: damage the stored payload of job ``job_id`` (its ``args`` or
``kwargs``) so that the driver can no longer decode it, as a hand edit of the
store would; its state, queue and lease columns stay as they are."""

FailNextCall = Callable[[Driver], None]
"""A driver hook: make the driver's next call fail as a lost connection, a
timeout or a failing disk would, before anything of it is applied; the call
after it works again."""


CallerTransaction = Callable[[Driver], AbstractContextManager[Any]]
"""A driver hook: open a connection of the store's client library with a
transaction begun on it, as an application would, and yield the connection;
commit when the block ends, roll back when it raises."""


class DriverHooks:
    """Optional hooks a driver's test class gives as fixtures; tests that need
    a hook the driver lacks are skipped, naming it.

    Override a fixture in your ``ConformanceSuite`` subclass to return the hook::

        @pytest.fixture
        def fail_next_call(self):
            return lambda driver: driver.break_next_call()  # your driver's own means
    """

    @pytest.fixture
    def plant_corrupt_job(self) -> PlantCorruptJob | None:
        """:data:`PlantCorruptJob`, or None: the corrupt-data rules are skipped."""
        return None

    @pytest.fixture
    def fail_next_call(self) -> FailNextCall | None:
        """:data:`FailNextCall`, or None: the transient-failure rules are skipped."""
        return None

    @pytest.fixture
    def caller_transaction(self) -> CallerTransaction | None:
        """:data:`CallerTransaction`, or None: the transactional-enqueue rules are skipped."""
        return None


_Hook = TypeVar("_Hook")


def hook(value: _Hook | None, name: str) -> _Hook:
    """The hook fixture's value; the test is skipped, naming it, when it is None."""
    if value is None:
        pytest.skip(f"the driver's test class gives no {name!r} fixture (an optional hook)")
    return value


class HarborFixture:
    """Gives every test of the suite its ``harbor``.  Needs a ``driver_factory`` fixture."""

    @pytest.fixture
    def harbor(self, driver_factory: DriverFactory, request: pytest.FixtureRequest) -> Harbor:
        """A fresh store from ``driver_factory`` on a new clock, schema migrated."""
        clock = FakeClock(START)
        driver = driver_factory(clock)
        skip_unless_capable(driver, request.function)
        driver.migrate()
        return Harbor(driver, clock)
