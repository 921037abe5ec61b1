"""A chord's callback is released exactly once when its members finish at the same instant.

Fifty members are completed one per transaction from ten threads, each call on
its own pooled connection, all started together: the last completions race.
A lost race would leave the callback ``pending`` forever; a stale read would
release it with a member's result missing from its input.
"""

from __future__ import annotations

import threading

import pytest
from test_postgres_support import MakeDriver, make_driver

from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.spec import (
    Completion,
    EnqueueRequest,
    FakeClock,
    JobRecord,
    JobState,
    StepSpec,
    WorkflowGraph,
    WorkflowState,
)

__all__ = ["make_driver"]

pytestmark = pytest.mark.postgres

MEMBERS = 50
THREADS = 10
ROUNDS = 12


def chord() -> WorkflowGraph:
    members = tuple(StepSpec(EnqueueRequest("member", args=(i,))) for i in range(MEMBERS))
    callback = StepSpec(
        EnqueueRequest("total", args=("callback",)),
        after=tuple(range(MEMBERS)),
        input=list(range(MEMBERS)),
    )
    return WorkflowGraph(steps=(*members, callback), result=MEMBERS)


def complete_together(driver: PostgresDriver, leased: list[JobRecord]) -> None:
    """Complete every job, one per call, from :data:`THREADS` threads started at once."""
    start = threading.Barrier(THREADS)
    refused: list[object] = []

    def work(share: list[JobRecord]) -> None:
        start.wait()
        for job in share:
            refused.extend(
                driver.complete([Completion(job.id, job.lease_token or "", job.args[0])])
            )

    threads = [
        threading.Thread(target=work, args=(leased[index::THREADS],)) for index in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refused == []


def test_the_callback_is_released_once_with_every_result(make_driver: MakeDriver) -> None:
    driver = make_driver(clock=FakeClock(), pool_size=THREADS)
    for _ in range(ROUNDS):
        workflow = driver.enqueue_workflow(chord())
        members = driver.lease(["default"], MEMBERS + 1, 30, "w")
        assert len(members) == MEMBERS  # the callback waits
        complete_together(driver, members)

        (callback,) = driver.get([workflow.steps[-1]])
        assert callback.state is JobState.AVAILABLE
        assert callback.args == (list(range(MEMBERS)), "callback")
        (leased,) = driver.lease(["default"], MEMBERS, 30, "w")
        assert leased.id == callback.id
        assert driver.complete([Completion(leased.id, leased.lease_token or "", "sum")]) == []
        assert driver.get_workflow(workflow.id).state is WorkflowState.SUCCEEDED
