"""Rules of workflow idempotency keys (capability ``workflow_idempotency``).

A graph's ``idempotency_key`` is held by the workflow it stored until that
workflow is pruned: enqueueing a graph with a held key stores nothing and
returns the holder, so a producer that retries, or two that race, create one
workflow.
"""

from __future__ import annotations

import threading

from taskharbor.spec import (
    EnqueueRequest,
    JobFilter,
    JobState,
    StepSpec,
    WorkflowFilter,
    WorkflowGraph,
    WorkflowRecord,
    WorkflowState,
)

from .harness import Harbor, HarborFixture, requires

RACERS = 4
"""Producers that enqueue one keyed workflow at the same instant."""


def keyed_chain(key: str | None, *tasks: str) -> WorkflowGraph:
    """A chain of ``tasks`` (each step in a queue named after its task) keyed by ``key``."""
    steps = tuple(
        StepSpec(EnqueueRequest(task, queue=task), after=() if i == 0 else (i - 1,))
        for i, task in enumerate(tasks)
    )
    return WorkflowGraph(steps, result=len(steps) - 1, idempotency_key=key)


class WorkflowIdempotencyRules(HarborFixture):
    @requires("workflow_idempotency")
    def test_a_held_workflow_key_returns_the_stored_workflow(self, harbor: Harbor) -> None:
        first = harbor.driver.enqueue_workflow(keyed_chain("order-1", "charge", "ship"))
        assert first.idempotency_key == "order-1"
        harbor.advance(5)
        again = harbor.driver.enqueue_workflow(keyed_chain("order-1", "charge", "ship"))
        assert again == harbor.driver.get_workflow(first.id) == first
        assert len(harbor.all_jobs()) == 2, "a repeat of the key stored steps"
        assert harbor.driver.list_workflows(WorkflowFilter()) == [first]

    @requires("workflow_idempotency")
    def test_a_held_workflow_key_wins_whatever_the_graph(self, harbor: Harbor) -> None:
        first = harbor.driver.enqueue_workflow(keyed_chain("order-1", "charge"))
        other = harbor.driver.enqueue_workflow(keyed_chain("order-1", "refund", "notify"))
        assert other == first
        assert [job.task for job in harbor.all_jobs()] == ["charge"]

    @requires("workflow_idempotency")
    def test_a_workflow_key_is_held_whatever_the_workflows_state(self, harbor: Harbor) -> None:
        first = harbor.driver.enqueue_workflow(keyed_chain("order-1", "charge"))
        harbor.finish(harbor.get(first.steps[0]))
        finished = harbor.driver.get_workflow(first.id)
        assert finished.state == WorkflowState.SUCCEEDED
        again = harbor.driver.enqueue_workflow(keyed_chain("order-1", "charge"))
        assert again == finished
        cancelled = harbor.driver.enqueue_workflow(keyed_chain("order-2", "charge"))
        harbor.driver.cancel_workflow(cancelled.id)
        assert harbor.driver.enqueue_workflow(keyed_chain("order-2", "charge")).id == cancelled.id

    @requires("workflow_idempotency")
    def test_workflow_keys_and_job_keys_are_apart(self, harbor: Harbor) -> None:
        job = harbor.enqueue(idempotency_key="shared")
        record = harbor.driver.enqueue_workflow(keyed_chain("shared", "charge"))
        assert record.steps != (job.id,)
        assert harbor.get(record.steps[0]).idempotency_key is None
        (again,) = harbor.driver.enqueue([EnqueueRequest("task", idempotency_key="shared")])
        assert (again.created, again.job.id) == (False, job.id)

    @requires("workflow_idempotency")
    def test_workflows_without_a_key_are_each_stored(self, harbor: Harbor) -> None:
        first = harbor.driver.enqueue_workflow(keyed_chain(None, "charge"))
        second = harbor.driver.enqueue_workflow(keyed_chain(None, "charge"))
        assert first.id != second.id
        assert (first.idempotency_key, second.idempotency_key) == (None, None)

    @requires("workflow_idempotency")
    def test_pruning_a_workflow_frees_its_key(self, harbor: Harbor) -> None:
        first = harbor.driver.enqueue_workflow(keyed_chain("order-1", "charge"))
        harbor.finish(harbor.get(first.steps[0]))
        assert harbor.driver.prune(harbor.advance(1)) == 1
        again = harbor.driver.enqueue_workflow(keyed_chain("order-1", "charge"))
        assert again.id != first.id
        assert (again.state, again.idempotency_key) == (WorkflowState.RUNNING, "order-1")
        assert [job.state for job in harbor.all_jobs()] == [JobState.AVAILABLE]

    @requires("workflow_idempotency")
    def test_producers_racing_on_one_key_store_one_workflow(self, harbor: Harbor) -> None:
        start = threading.Barrier(RACERS)
        answers: list[WorkflowRecord] = []
        failures: list[BaseException] = []

        def produce() -> None:
            try:
                start.wait()
                answers.append(
                    harbor.driver.enqueue_workflow(keyed_chain("order-1", "charge", "ship"))
                )
            except BaseException as exc:  # reported below, with the others
                failures.append(exc)

        racers = [threading.Thread(target=produce) for _ in range(RACERS)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert failures == []
        stored = harbor.driver.list_workflows(WorkflowFilter())
        assert len(stored) == 1, f"{len(stored)} workflows for one key"
        assert {answer.id for answer in answers} == {stored[0].id}
        steps = harbor.driver.list_jobs(JobFilter(workflow_id=stored[0].id))
        assert len(harbor.all_jobs()) == len(steps) == 2
