"""Calls that every worker makes at once: they must neither collide nor do work twice."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import pytest
from test_postgres_support import MakeDriver, make_driver

from taskharbor.drivers.postgres import driver as postgres
from taskharbor.spec import (
    Completion,
    EnqueueRequest,
    FakeClock,
    JobState,
    StepSpec,
    WorkflowGraph,
)

__all__ = ["make_driver"]

pytestmark = pytest.mark.postgres

CALLERS = 8
T = TypeVar("T")


def all_at_once(call: Callable[[], T], callers: int = CALLERS) -> list[T]:
    """``call`` from ``callers`` threads released together; every result."""
    start = threading.Barrier(callers)
    results: list[T] = []
    failures: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            results.append(call())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    return results


def test_one_idempotency_key_enqueued_at_once_stores_one_job(make_driver: MakeDriver) -> None:
    driver = make_driver(clock=FakeClock(), pool_size=CALLERS)
    for round_ in range(5):
        request = EnqueueRequest("charge", idempotency_key=f"order-{round_}")
        results = all_at_once(lambda request=request: driver.enqueue([request])[0])
        assert sum(result.created for result in results) == 1
        assert len({result.job.id for result in results}) == 1


def test_concurrent_leases_never_hand_out_a_job_twice(make_driver: MakeDriver) -> None:
    driver = make_driver(clock=FakeClock(), pool_size=CALLERS)
    driver.enqueue([EnqueueRequest("t", args=(n,)) for n in range(400)])
    batches = all_at_once(lambda: driver.lease(["default"], 60, 30, "w"))
    leased = Counter(job.id for batch in batches for job in batch)
    assert sum(leased.values()) == 400
    assert max(leased.values()) == 1


def test_promote_and_rescue_from_every_worker_at_once_move_each_job_once(
    make_driver: MakeDriver,
) -> None:
    clock = FakeClock()
    driver = make_driver(clock=clock, pool_size=CALLERS)
    later = clock.now() + timedelta(seconds=10)
    driver.enqueue([EnqueueRequest("t", args=(n,), run_at=later) for n in range(300)])
    driver.enqueue([EnqueueRequest("t", args=(n,), queue="leased") for n in range(300)])
    driver.lease(["leased"], 300, 5, "w")
    clock.advance(10)

    promoted = all_at_once(driver.promote)
    assert sum(result.promoted for result in promoted) == 300
    rescued = all_at_once(driver.rescue)
    ids = Counter(job_id for result in rescued for job_id in result)
    assert (len(ids), max(ids.values())) == (300, 1)
    counts = driver.count()
    assert counts == {("default", JobState.AVAILABLE): 300, ("leased", JobState.RETRYING): 300}


def test_prune_works_through_a_backlog_in_batches(
    make_driver: MakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "PRUNE_BATCH", 7)
    clock = FakeClock()
    driver = make_driver(clock=clock)
    driver.enqueue([EnqueueRequest("t", args=(n,)) for n in range(30)])
    for _ in range(10):
        driver.enqueue_workflow(
            WorkflowGraph(
                steps=(StepSpec(EnqueueRequest("a")), StepSpec(EnqueueRequest("b"))), result=1
            )
        )
    jobs = driver.lease(["default"], 100, 30, "w")
    assert driver.complete([Completion(job.id, job.lease_token or "", None) for job in jobs]) == []
    kept = driver.enqueue([EnqueueRequest("unfinished")])[0].job
    clock.advance(1)
    assert driver.prune(clock.now()) == 30 + 10 * 2
    assert driver.count() == {("default", JobState.AVAILABLE): 1}
    assert driver.get([kept.id])[0].id == kept.id
