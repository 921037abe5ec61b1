"""Bad input raises the documented error type, and the store is unchanged afterwards.

Every case runs against a store holding jobs in several states (:class:`Stock`)
and compares a snapshot of the whole store before and after the refused call,
so a driver that applies part of a batch before noticing a bad item fails.
Requests validate themselves when built (:mod:`taskharbor.spec.records`), so
the cases with a bad request build it inside the refused call: the path from
caller to store is checked as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from taskharbor.spec import (
    Completion,
    EnqueueRequest,
    ErrorReport,
    Failure,
    InvalidRequest,
    JobFilter,
    JobNotFound,
    JobRecord,
    JobState,
    LeaseRef,
    Progress,
    RetryPolicy,
    SnoozeRequest,
    StepSpec,
    WorkflowGraph,
)

from .harness import BOOM, LEASE_SECONDS, Harbor, HarborFixture

UNKNOWN = 10**9
"""A job id no test store reaches."""


@dataclass(frozen=True)
class Stock:
    """Jobs a bad call could wrongly touch: one available, one running, one dead."""

    available: JobRecord
    running: JobRecord
    dead: JobRecord

    @classmethod
    def of(cls, harbor: Harbor) -> Stock:
        return cls(
            available=harbor.job_in(JobState.AVAILABLE),
            running=harbor.job_in(JobState.RUNNING),
            dead=harbor.job_in(JobState.DEAD),
        )

    @property
    def token(self) -> str:
        assert self.running.lease_token is not None
        return self.running.lease_token


Call = Callable[[Harbor, Stock], object]


def refused_without_change(harbor: Harbor, call: Call, error: type[Exception]) -> None:
    """``call`` raises ``error`` and leaves every job as it was."""
    stock = Stock.of(harbor)
    before = harbor.snapshot()
    with pytest.raises(error):
        call(harbor, stock)
    assert harbor.snapshot() == before


def wrong(value: object) -> Any:
    """A deliberately ill-typed argument, let past the type checker."""
    return value


def cases(table: dict[str, Call]) -> pytest.MarkDecorator:
    """Parametrize a test over a table of named calls."""
    return pytest.mark.parametrize("call", list(table.values()), ids=list(table))


def enqueue(**fields: Any) -> Call:
    """Enqueue a valid job and a job built from ``fields``, in one batch."""
    return lambda h, s: h.driver.enqueue([EnqueueRequest("ok"), EnqueueRequest(**fields)])


EMPTY_BATCHES: dict[str, Call] = {
    "enqueue": lambda h, s: h.driver.enqueue([]),
    "complete": lambda h, s: h.driver.complete([]),
    "fail": lambda h, s: h.driver.fail([]),
    "snooze": lambda h, s: h.driver.snooze([]),
    "heartbeat": lambda h, s: h.driver.heartbeat([], LEASE_SECONDS),
    "cancel": lambda h, s: h.driver.cancel([]),
    "requeue": lambda h, s: h.driver.requeue([]),
    "get": lambda h, s: h.driver.get([]),
}

WRONG_TYPES: dict[str, Call] = {
    "enqueue-a-bare-request": lambda h, s: h.driver.enqueue(wrong(EnqueueRequest("t"))),
    "enqueue-a-string": lambda h, s: h.driver.enqueue(wrong([EnqueueRequest("t"), "t"])),
    "complete-a-lease-ref": lambda h, s: h.driver.complete(
        wrong([Completion(s.running.id, s.token), LeaseRef(s.running.id, s.token)])
    ),
    "fail-a-completion": lambda h, s: h.driver.fail(wrong([Completion(s.running.id, s.token)])),
    "snooze-a-lease-ref": lambda h, s: h.driver.snooze(wrong([LeaseRef(s.running.id, s.token)])),
    "heartbeat-a-completion": lambda h, s: h.driver.heartbeat(
        wrong([Completion(s.running.id, s.token)]), LEASE_SECONDS
    ),
    "cancel-a-string-id": lambda h, s: h.driver.cancel(wrong([s.available.id, str(s.dead.id)])),
    "cancel-a-bool-id": lambda h, s: h.driver.cancel([s.available.id, True]),
    "requeue-a-float-id": lambda h, s: h.driver.requeue(wrong([float(s.dead.id)])),
    "get-a-string-id": lambda h, s: h.driver.get(wrong([str(s.available.id)])),
    "list-jobs-without-filter": lambda h, s: h.driver.list_jobs(wrong({"limit": 1})),
    "enqueue-workflow-a-list": lambda h, s: h.driver.enqueue_workflow(
        wrong([StepSpec(EnqueueRequest("t"))])
    ),
    "get-workflow-a-string": lambda h, s: h.driver.get_workflow(wrong("1")),
    "prune-a-string": lambda h, s: h.driver.prune(wrong("2030-01-01T00:00:00+00:00")),
    "prune-a-naive-datetime": lambda h, s: h.driver.prune(datetime(2100, 1, 1)),
    "prune-no-states": lambda h, s: h.driver.prune(h.later(9), frozenset()),
    "prune-an-unfinished-state": lambda h, s: h.driver.prune(h.later(9), {JobState.AVAILABLE}),
    "prune-a-state-as-string": lambda h, s: h.driver.prune(h.later(9), wrong({"dead"})),
}

NAMED_TWICE: dict[str, Call] = {
    "cancel": lambda h, s: h.driver.cancel([s.available.id, s.available.id]),
    "requeue": lambda h, s: h.driver.requeue([s.dead.id, s.dead.id]),
    "complete": lambda h, s: h.driver.complete(
        [Completion(s.running.id, s.token, 1), Completion(s.running.id, s.token, 2)]
    ),
    "fail": lambda h, s: h.driver.fail(
        [Failure(s.running.id, s.token, BOOM), Failure(s.running.id, s.token, BOOM)]
    ),
    "snooze": lambda h, s: h.driver.snooze([SnoozeRequest(s.running.id, s.token, h.later(9))] * 2),
    "heartbeat": lambda h, s: h.driver.heartbeat([LeaseRef(s.running.id, s.token)] * 2, 99),
}

UNKNOWN_IDS: dict[str, Call] = {
    "cancel": lambda h, s: h.driver.cancel([s.available.id, UNKNOWN]),
    "requeue": lambda h, s: h.driver.requeue([s.dead.id, UNKNOWN]),
}
"""Operator calls; in the fenced calls an unknown id is a lost lease instead (fencing.py)."""


def lease_for(seconds: Any) -> Call:
    return lambda h, s: h.driver.lease(["queue-available"], 1, seconds, "w")


def heartbeat_for(seconds: Any) -> Call:
    return lambda h, s: h.driver.heartbeat([LeaseRef(s.running.id, s.token)], seconds)


def lease_up_to(limit: Any) -> Call:
    return lambda h, s: h.driver.lease(["queue-available"], limit, 30, "w")


BAD_SECONDS = (0, -1.5, math.nan, math.inf, "30", True, None)

BAD_LEASE_ARGUMENTS: dict[str, Call] = {
    **{f"lease-seconds-{value!r}": lease_for(value) for value in BAD_SECONDS},
    **{f"heartbeat-seconds-{value!r}": heartbeat_for(value) for value in BAD_SECONDS},
    **{f"limit-{value!r}": lease_up_to(value) for value in (0, -1, 1.5, "1", True, None)},
    "no-queues": lambda h, s: h.driver.lease([], 1, 30, "w"),
    "queue-not-a-string": lambda h, s: h.driver.lease(wrong(["queue-available", 3]), 1, 30, "w"),
}

BAD_REQUESTS: dict[str, Call] = {
    "naive-run-at": enqueue(task="t", run_at=datetime(2030, 1, 1)),
    "object-in-args": enqueue(task="t", args=(object(),)),
    "nan-in-args": enqueue(task="t", args=(math.nan,)),
    "infinity-in-kwargs": enqueue(task="t", kwargs={"x": math.inf}),
    "tuple-in-args": enqueue(task="t", args=((1, 2),)),
    "args-as-list": enqueue(task="t", args=[1, 2]),
    "non-string-key": enqueue(task="t", kwargs={"x": {1: "one"}}),
    "nul-in-task-name": enqueue(task="t\x00"),
    "lone-surrogate-in-args": enqueue(task="t", args=("\ud800",)),
    "empty-task": enqueue(task=""),
    "empty-queue": enqueue(task="t", queue=""),
    "priority-too-high": enqueue(task="t", priority=32768),
    "priority-too-low": enqueue(task="t", priority=-32769),
    "priority-a-bool": enqueue(task="t", priority=True),
    "zero-max-attempts": enqueue(task="t", max_attempts=0),
    "max-attempts-too-high": enqueue(task="t", max_attempts=10_001),
    "empty-idempotency-key": enqueue(task="t", idempotency_key=""),
    "retry-not-a-policy": enqueue(task="t", retry="exponential"),
    "headers-not-a-mapping": enqueue(task="t", headers=[("a", "b")]),
    "header-value-not-a-string": enqueue(task="t", headers={"a": 1}),
    "header-name-empty": enqueue(task="t", headers={"": "b"}),
    "header-value-with-nul": enqueue(task="t", headers={"a": "b\x00"}),
    "header-value-too-long": enqueue(task="t", headers={"a": "x" * 2049}),
    "too-many-headers": enqueue(task="t", headers={f"h{i}": "v" for i in range(33)}),
    "tags-as-a-string": enqueue(task="t", tags="urgent"),
    "tag-not-a-string": enqueue(task="t", tags=[1]),
    "tag-empty": enqueue(task="t", tags=[""]),
    "tag-too-long": enqueue(task="t", tags=["x" * 65]),
    "tag-with-nul": enqueue(task="t", tags=["a\x00"]),
    "tag-repeated": enqueue(task="t", tags=["a", "b", "a"]),
    "too-many-tags": enqueue(task="t", tags=[f"t{i}" for i in range(17)]),
    "meta-not-a-mapping": enqueue(task="t", meta=[("a", 1)]),
    "meta-not-json": enqueue(task="t", meta={"a": object()}),
    "meta-nan": enqueue(task="t", meta={"a": math.nan}),
    "meta-too-big": enqueue(task="t", meta={"a": "x" * 4090}),
    "progress-above-one": lambda h, s: h.driver.heartbeat(
        [LeaseRef(s.running.id, s.token, Progress(1.5))], 30
    ),
    "progress-negative": lambda h, s: h.driver.heartbeat(
        [LeaseRef(s.running.id, s.token, Progress(-0.1))], 30
    ),
    "progress-nan": lambda h, s: h.driver.heartbeat(
        [LeaseRef(s.running.id, s.token, Progress(math.nan))], 30
    ),
    "progress-a-bool": lambda h, s: h.driver.heartbeat(
        [LeaseRef(s.running.id, s.token, Progress(True))], 30
    ),
    "progress-message-too-long": lambda h, s: h.driver.heartbeat(
        [LeaseRef(s.running.id, s.token, Progress(0.5, "x" * 257))], 30
    ),
    "progress-not-a-progress": lambda h, s: h.driver.heartbeat(
        [LeaseRef(s.running.id, s.token, wrong(0.5))], 30
    ),
    "retry-unknown-kind": lambda h, s: h.driver.enqueue(
        [EnqueueRequest("t", retry=RetryPolicy("x"))]
    ),
    "retry-factor-below-one": lambda h, s: h.driver.enqueue(
        [EnqueueRequest("t", retry=RetryPolicy(factor=0.5))]
    ),
    "retry-cap-too-long": lambda h, s: h.driver.enqueue(
        [EnqueueRequest("t", retry=RetryPolicy(cap=1e12))]
    ),
    "non-json-result": lambda h, s: h.driver.complete([Completion(s.running.id, s.token, {1, 2})]),
    "nan-result": lambda h, s: h.driver.complete([Completion(s.running.id, s.token, math.nan)]),
    "naive-retry-at": lambda h, s: h.driver.fail(
        [Failure(s.running.id, s.token, BOOM, retry_at=datetime(2030, 1, 1))]
    ),
    "error-without-type": lambda h, s: h.driver.fail(
        [Failure(s.running.id, s.token, ErrorReport(type="", message="m"))]
    ),
    "naive-snooze-time": lambda h, s: h.driver.snooze(
        [SnoozeRequest(s.running.id, s.token, datetime(2030, 1, 1))]
    ),
    "empty-token": lambda h, s: h.driver.heartbeat([LeaseRef(s.running.id, "")], 30),
    "filter-state-as-string": lambda h, s: h.driver.list_jobs(
        JobFilter(states=wrong(frozenset({"dead"})))
    ),
    "filter-limit-zero": lambda h, s: h.driver.list_jobs(JobFilter(limit=0)),
    "filter-tag-empty": lambda h, s: h.driver.list_jobs(JobFilter(tag="")),
    "filter-tag-not-a-string": lambda h, s: h.driver.list_jobs(JobFilter(tag=wrong(["a"]))),
    "filter-naive-created-since": lambda h, s: h.driver.list_jobs(
        JobFilter(created_since=datetime(2030, 1, 1))
    ),
    "filter-created-since-as-string": lambda h, s: h.driver.list_jobs(
        JobFilter(created_since=wrong("2030-01-01T00:00:00+00:00"))
    ),
    "workflow-without-steps": lambda h, s: h.driver.enqueue_workflow(WorkflowGraph((), result=0)),
    "workflow-input-not-awaited": lambda h, s: h.driver.enqueue_workflow(
        WorkflowGraph(
            (StepSpec(EnqueueRequest("a")), StepSpec(EnqueueRequest("b"), input=0)), result=1
        )
    ),
    "workflow-forward-dependency": lambda h, s: h.driver.enqueue_workflow(
        WorkflowGraph((StepSpec(EnqueueRequest("a"), after=(1,)), StepSpec(EnqueueRequest("b"))), 1)
    ),
}


EXTREME_INSTANTS = {
    "min-at-plus-5h": datetime.min.replace(tzinfo=timezone(timedelta(hours=5))),
    "min-utc": datetime.min.replace(tzinfo=UTC),
    "max-utc": datetime.max.replace(tzinfo=UTC),
    "max-at-minus-5h": datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))),
}
"""Instants a datetime can hold but a store cannot keep or give back in UTC (year 0 or
10000 once converted, or at a calendar's very edge)."""

EXTREME_SECONDS = (1e12, 1e300, 10**20)
"""Finite durations whose end, counted from any clock's now, is past the last date."""


def _instant_calls(moment: datetime) -> dict[str, Call]:
    return {
        "enqueue-run-at": enqueue(task="t", run_at=moment),
        "fail-retry-at": lambda h, s: h.driver.fail(
            [Failure(s.running.id, s.token, BOOM, retry_at=moment)]
        ),
        "snooze-run-at": lambda h, s: h.driver.snooze(
            [SnoozeRequest(s.running.id, s.token, moment)]
        ),
        "list-created-since": lambda h, s: h.driver.list_jobs(JobFilter(created_since=moment)),
        "prune-finished-before": lambda h, s: h.driver.prune(moment),
    }


EXTREME_TIMES: dict[str, Call] = {
    **{
        f"{call}-{name}": make
        for name, moment in EXTREME_INSTANTS.items()
        for call, make in _instant_calls(moment).items()
    },
    **{f"lease-seconds-{value!r}": lease_for(value) for value in EXTREME_SECONDS},
    **{f"heartbeat-seconds-{value!r}": heartbeat_for(value) for value in EXTREME_SECONDS},
}
"""Every call that takes an instant or a duration, with each extreme value."""


class BadInputRules(HarborFixture):
    @cases(EMPTY_BATCHES)
    def test_an_empty_batch_is_refused(self, harbor: Harbor, call: Call) -> None:
        refused_without_change(harbor, call, InvalidRequest)

    @cases(WRONG_TYPES)
    def test_an_argument_of_the_wrong_type_is_refused(self, harbor: Harbor, call: Call) -> None:
        refused_without_change(harbor, call, InvalidRequest)

    @cases(NAMED_TWICE)
    def test_a_batch_naming_one_job_twice_is_refused(self, harbor: Harbor, call: Call) -> None:
        refused_without_change(harbor, call, InvalidRequest)

    @cases(UNKNOWN_IDS)
    def test_an_unknown_job_id_is_refused_with_the_rest_of_its_batch(
        self, harbor: Harbor, call: Call
    ) -> None:
        refused_without_change(harbor, call, JobNotFound)

    @cases(BAD_LEASE_ARGUMENTS)
    def test_a_bad_lease_duration_limit_or_queue_list_is_refused(
        self, harbor: Harbor, call: Call
    ) -> None:
        refused_without_change(harbor, call, InvalidRequest)

    @cases(BAD_REQUESTS)
    def test_a_bad_request_is_refused_before_anything_is_stored(
        self, harbor: Harbor, call: Call
    ) -> None:
        refused_without_change(harbor, call, InvalidRequest)

    @cases(EXTREME_TIMES)
    def test_an_instant_or_duration_out_of_range_is_refused(
        self, harbor: Harbor, call: Call
    ) -> None:
        refused_without_change(harbor, call, InvalidRequest)
