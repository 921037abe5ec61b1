"""Model tests of the workers registry: a driver and the model side by side.

A state machine of its own (:func:`workers_state_machine`), for drivers that
declare the ``workers`` capability, so that the job rules of
:class:`~taskharbor.model_tests.machine.DriverVsModel` keep their budget.
Workers register, are seen (by ``heartbeat_workers`` and by heartbeats of
the leases they hold), deregister, lease and finish jobs, while the clock
moves past their ``ttl_seconds`` so that they go and get forgotten; after
every step every stored worker is compared, its running jobs translated to
the model's ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskharbor.spec import (
    Clock,
    Completion,
    Driver,
    EnqueueRequest,
    FakeClock,
    JobId,
    LeaseRef,
    TaskHarborError,
    WorkerInfo,
    WorkerRecord,
)
from taskharbor.spec.model import ReferenceModel

from .divergence import Divergence
from .observe import sequence_differences
from .strategies import QUEUES, WORKERS

WORKER_IDS = (*WORKERS, "worker-idle")
"""Workers that lease, and one that never does."""

WORKER_TTLS = (2.0, 60.0)
"""Shorter and longer than the clock's steps, so workers go and get forgotten."""

CLOCK_STEPS = (0.5, 1.5, 3.0, 70.0)

LEASE_SECONDS = 300.0
"""Leases outlive the clock's steps here: expiry is the job rules' business."""

IDS = st.lists(st.sampled_from(WORKER_IDS), min_size=1, max_size=2, unique=True)


@dataclass(frozen=True, slots=True)
class _Factory:
    make: Callable[[Clock], Driver]


@dataclass(frozen=True, slots=True)
class _Lease:
    """One lease on both stores: the model's job id and token, the driver's."""

    model: LeaseRef
    driver: LeaseRef


def _info(worker_id: str, ttl: float) -> WorkerInfo:
    return WorkerInfo(worker_id, "host", 1, QUEUES, 2, "1.0", ttl)


class WorkersVsModel(RuleBasedStateMachine):
    """Random registry calls, leases and clock steps on a driver and on the model."""

    factory: ClassVar[_Factory]

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.model: Driver = ReferenceModel(clock=self.clock)
        self.driver = self.factory.make(self.clock)
        self.driver.migrate()
        self.to_model: dict[JobId, JobId] = {}
        self.leases: list[_Lease] = []

    def teardown(self) -> None:
        self.driver.close()

    def _both(self, what: str, call: Callable[[Driver], Any]) -> tuple[Any, Any] | None:
        """``call`` on the model, then on the driver: both return, or both refuse alike."""
        outcomes: list[Any] = []
        for store in (self.model, self.driver):
            try:
                outcomes.append(call(store))
            except TaskHarborError as refusal:
                outcomes.append(refusal)
        expected, got = outcomes
        refused = [isinstance(o, TaskHarborError) for o in outcomes]
        if refused[0] != refused[1] or (refused[0] and type(expected) is not type(got)):
            raise Divergence(f"{what}: model gave {expected!r}, driver {got!r}")
        return None if refused[0] else (expected, got)

    @rule(ids=IDS, ttl=st.sampled_from(WORKER_TTLS))
    def register_workers(self, ids: list[str], ttl: float) -> None:
        infos = [_info(worker_id, ttl) for worker_id in ids]
        outcome = self._both("register_workers", lambda s: s.register_workers(infos))
        if outcome is not None:
            self._compare("register_workers", *outcome)

    @rule(ids=IDS)
    def heartbeat_workers(self, ids: list[str]) -> None:
        outcome = self._both("heartbeat_workers", lambda s: s.heartbeat_workers(ids))
        if outcome is not None and outcome[0] != outcome[1]:
            raise Divergence(f"heartbeat_workers: model={outcome[0]} driver={outcome[1]}")

    @rule(ids=IDS)
    def deregister_workers(self, ids: list[str]) -> None:
        self._both("deregister_workers", lambda s: s.deregister_workers(ids))

    @rule(worker=st.sampled_from(WORKERS))
    def lease(self, worker: str) -> None:
        request = EnqueueRequest("task", queue=QUEUES[0])
        self._both("enqueue", lambda s: s.enqueue([request]))
        outcome = self._both("lease", lambda s: s.lease([QUEUES[0]], 1, LEASE_SECONDS, worker))
        assert outcome is not None
        expected, got = outcome
        if len(expected) != len(got):
            raise Divergence(f"lease: model={expected} driver={got}")
        for mine, theirs in zip(expected, got, strict=True):
            self.to_model[theirs.id] = mine.id
            self.leases.append(
                _Lease(
                    LeaseRef(mine.id, str(mine.lease_token)),
                    LeaseRef(theirs.id, str(theirs.lease_token)),
                )
            )

    @precondition(lambda self: bool(self.leases))
    @rule()
    def heartbeat_leases(self) -> None:
        self.model.heartbeat([lease.model for lease in self.leases], LEASE_SECONDS)
        self.driver.heartbeat([lease.driver for lease in self.leases], LEASE_SECONDS)

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        lease = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        self.model.complete([Completion(lease.model.job_id, lease.model.token)])
        self.driver.complete([Completion(lease.driver.job_id, lease.driver.token)])

    @rule(seconds=st.sampled_from(CLOCK_STEPS))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def workers_agree(self) -> None:
        self._compare("stored workers", self.model.list_workers(), self.driver.list_workers())

    def _compare(
        self, what: str, expected: Sequence[WorkerRecord], got: Sequence[WorkerRecord]
    ) -> None:
        translated = [
            replace(record, running=tuple(sorted(self.to_model[j] for j in record.running)))
            for record in got
        ]
        problems = sequence_differences("worker", list(expected), translated)
        if problems:
            raise Divergence(f"{what}:\n  " + "\n  ".join(problems))


def workers_state_machine(driver_factory: Callable[[Clock], Driver]) -> type[WorkersVsModel]:
    """A state machine class comparing the workers registry of fresh stores of
    ``driver_factory`` with the model's."""
    return type("WorkersStateMachine", (WorkersVsModel,), {"factory": _Factory(driver_factory)})


__all__ = ["WorkersVsModel", "workers_state_machine"]
