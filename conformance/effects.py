"""Every event's field effects, checked against the data of :mod:`taskharbor.spec.effects`.

Each case brings a job to an event's source state through the driver, applies
the event at a later instant, and asks :func:`~taskharbor.spec.effects.effect_violations`
whether the stored job changed exactly as the published effects say: the
fields the event or the states it leaves and enters name, and no other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from taskharbor.spec import (
    Completion,
    Failure,
    JobEvent,
    JobRecord,
    JobState,
    SnoozeRequest,
)
from taskharbor.spec.effects import effect_violations

from .harness import BOOM, LEASE_SECONDS, WORKER, Harbor, HarborFixture


@dataclass(frozen=True)
class Case:
    """A job in the event's source state, and how to apply the event to it."""

    event: JobEvent
    target: JobState
    prepare: Callable[[Harbor], JobRecord]
    apply: Callable[[Harbor, JobRecord], Any]
    given: Callable[[Harbor, JobRecord], dict[str, Any]] = field(default=lambda harbor, job: {})
    lease_seconds: float | None = None


def _in(state: JobState) -> Callable[[Harbor], JobRecord]:
    return lambda harbor: harbor.job_in(state)


def _release(harbor: Harbor, job: JobRecord) -> None:
    (first,) = harbor.lease([f"{job.queue}-dependency"])
    harbor.complete(first, "input")


def _asked_to_cancel(harbor: Harbor) -> JobRecord:
    job = harbor.running(max_attempts=3)
    harbor.driver.cancel([job.id])
    return harbor.get(job.id)


def _fail(
    permanent: bool = False, later: float | None = None
) -> Callable[[Harbor, JobRecord], Any]:
    def apply(harbor: Harbor, job: JobRecord) -> Any:
        retry_at = None if later is None else harbor.later(later)
        token = job.lease_token or ""
        return harbor.driver.fail(
            [Failure(job.id, token, BOOM, retry_at=retry_at, permanent=permanent)]
        )

    return apply


def _snooze(harbor: Harbor, job: JobRecord) -> Any:
    return harbor.driver.snooze([SnoozeRequest(job.id, job.lease_token or "", harbor.later(90))])


def _expire(harbor: Harbor, job: JobRecord) -> Any:
    harbor.advance(LEASE_SECONDS)
    return harbor.driver.rescue()


CASES = [
    Case(JobEvent.RELEASE, JobState.AVAILABLE, _in(JobState.PENDING), _release),
    Case(
        JobEvent.PROMOTE,
        JobState.AVAILABLE,
        lambda h: h.job_in(JobState.SCHEDULED),
        lambda h, job: (h.advance(3600), h.driver.promote()),
    ),
    Case(
        JobEvent.PROMOTE,
        JobState.AVAILABLE,
        lambda h: h.job_in(JobState.RETRYING),
        lambda h, job: (h.advance(3600), h.driver.promote()),
    ),
    Case(
        JobEvent.LEASE,
        JobState.RUNNING,
        lambda h: h.enqueue(queue="leased"),
        lambda h, job: h.lease(["leased"], lease_seconds=45.5),
        given=lambda h, job: {"leased_by": WORKER},
        lease_seconds=45.5,
    ),
    Case(
        JobEvent.HEARTBEAT,
        JobState.RUNNING,
        lambda h: h.running(),
        lambda h, job: h.driver.heartbeat([h.lease_ref(job)], 12.25),
        lease_seconds=12.25,
    ),
    Case(
        JobEvent.SUCCEED,
        JobState.SUCCEEDED,
        lambda h: h.running(),
        lambda h, job: h.driver.complete([Completion(job.id, job.lease_token or "", [1, "r"])]),
        given=lambda h, job: {"result": [1, "r"]},
    ),
    Case(
        JobEvent.FAIL,
        JobState.RETRYING,
        lambda h: h.running(max_attempts=3),
        _fail(later=70),
        given=lambda h, job: {"run_at": h.later(70)},
    ),
    Case(
        JobEvent.FAIL,
        JobState.RETRYING,
        lambda h: h.running(max_attempts=3),
        _fail(),
        given=lambda h, job: {"run_at": h.now()},
    ),
    Case(JobEvent.FAIL, JobState.DEAD, lambda h: h.running(max_attempts=3), _fail(permanent=True)),
    Case(JobEvent.FAIL, JobState.CANCELLED, _asked_to_cancel, _fail()),
    Case(
        JobEvent.SNOOZE,
        JobState.SCHEDULED,
        lambda h: h.running(),
        _snooze,
        given=lambda h, job: {"run_at": h.later(90)},
    ),
    Case(JobEvent.SNOOZE, JobState.CANCELLED, _asked_to_cancel, _snooze),
    Case(JobEvent.LEASE_EXPIRED, JobState.RETRYING, lambda h: h.running(max_attempts=3), _expire),
    Case(JobEvent.LEASE_EXPIRED, JobState.DEAD, lambda h: h.running(max_attempts=1), _expire),
    Case(JobEvent.LEASE_EXPIRED, JobState.CANCELLED, _asked_to_cancel, _expire),
    *(
        Case(
            JobEvent.CANCEL,
            JobState.CANCELLED,
            _in(state),
            lambda h, job: h.driver.cancel([job.id]),
        )
        for state in (
            JobState.PENDING,
            JobState.SCHEDULED,
            JobState.AVAILABLE,
            JobState.RETRYING,
            JobState.DEAD,
        )
    ),
    *(
        Case(
            JobEvent.REQUEUE,
            JobState.AVAILABLE,
            _in(state),
            lambda h, job: h.driver.requeue([job.id]),
            given=lambda h, job: {"args": job.args},
        )
        for state in (JobState.DEAD, JobState.CANCELLED)
    ),
]


def case_id(case: Case) -> str:
    return f"{case.event}-to-{case.target}"


class FieldEffectRules(HarborFixture):
    @pytest.mark.parametrize("case", CASES, ids=[f"{n}-{case_id(c)}" for n, c in enumerate(CASES)])
    def test_an_event_changes_exactly_the_fields_its_published_effects_name(
        self, harbor: Harbor, case: Case
    ) -> None:
        before = case.prepare(harbor)
        harbor.advance(7.5)
        case.apply(harbor, before)
        after = harbor.get(before.id)
        assert after.state is case.target, f"{case.event} took job {before.id} to {after.state}"
        problems = effect_violations(
            case.event,
            before,
            after,
            harbor.now(),
            lease_seconds=case.lease_seconds,
            given=case.given(harbor, before),
        )
        assert problems == []
