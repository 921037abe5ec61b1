"""Rules of ``Driver.enqueue_in`` and ``Driver.enqueue_workflow_in``: jobs and
workflows enqueued inside the caller's transaction.

They apply to a driver that declares ``transactional_enqueue`` and whose test
class gives the ``caller_transaction`` hook (a connection of the store's own
client library, with a transaction open on it, as the application has).
"""

from __future__ import annotations

import pytest

from taskharbor.spec import (
    UNTIL_FINISHED,
    EnqueueRequest,
    InvalidRequest,
    JobFilter,
    JobState,
    StepSpec,
    WorkflowFilter,
    WorkflowGraph,
    WorkflowState,
)

from .harness import CallerTransaction, DriverHooks, Harbor, HarborFixture, hook, requires


class RolledBack(Exception):
    """Raised inside the caller's transaction so that it rolls back."""


class TransactionalEnqueueRules(HarborFixture, DriverHooks):
    @requires("transactional_enqueue")
    def test_jobs_enqueued_in_a_transaction_exist_once_it_commits(
        self, harbor: Harbor, caller_transaction: CallerTransaction | None
    ) -> None:
        transaction = hook(caller_transaction, "caller_transaction")
        with transaction(harbor.driver) as conn:
            (result,) = harbor.driver.enqueue_in(conn, [EnqueueRequest("signup", args=(1,))])
            assert result.created
            assert harbor.all_jobs() == [], "another connection saw a job before the commit"
        stored = harbor.get(result.job.id)
        assert stored == result.job
        assert (stored.state, stored.created_at, stored.args) == (
            JobState.AVAILABLE,
            harbor.now(),
            (1,),
        )
        assert [job.id for job in harbor.lease()] == [stored.id]

    @requires("transactional_enqueue")
    def test_jobs_enqueued_in_a_transaction_rolled_back_never_exist(
        self, harbor: Harbor, caller_transaction: CallerTransaction | None
    ) -> None:
        transaction = hook(caller_transaction, "caller_transaction")
        with pytest.raises(RolledBack), transaction(harbor.driver) as conn:
            harbor.driver.enqueue_in(conn, [EnqueueRequest("signup"), EnqueueRequest("other")])
            raise RolledBack
        assert harbor.snapshot() == ([], {})
        assert harbor.lease() == []

    @requires("transactional_enqueue")
    def test_an_idempotency_key_held_by_a_stored_job_returns_that_job(
        self, harbor: Harbor, caller_transaction: CallerTransaction | None
    ) -> None:
        transaction = hook(caller_transaction, "caller_transaction")
        stored = harbor.enqueue(idempotency_key="once")
        with transaction(harbor.driver) as conn:
            (again,) = harbor.driver.enqueue_in(
                conn, [EnqueueRequest("task", idempotency_key="once")]
            )
        assert (again.created, again.job) == (False, stored)
        assert harbor.driver.list_jobs(JobFilter()) == [stored]

    @requires("transactional_enqueue", "key_scopes")
    def test_a_key_given_up_in_a_rolled_back_transaction_stays_with_its_job(
        self, harbor: Harbor, caller_transaction: CallerTransaction | None
    ) -> None:
        transaction = hook(caller_transaction, "caller_transaction")
        old = harbor.job_in(JobState.DEAD, idempotency_key="k", key_scope=UNTIL_FINISHED)
        with pytest.raises(RolledBack), transaction(harbor.driver) as conn:
            (new,) = harbor.driver.enqueue_in(conn, [EnqueueRequest("task", idempotency_key="k")])
            assert new.created
            raise RolledBack
        (requeued,) = harbor.driver.requeue([old.id])  # never gave its key up: holds it again
        (again,) = harbor.driver.enqueue([EnqueueRequest("task", idempotency_key="k")])
        assert (again.created, again.job) == (False, requeued)

    @requires("transactional_enqueue")
    def test_an_empty_batch_in_a_transaction_is_refused(
        self, harbor: Harbor, caller_transaction: CallerTransaction | None
    ) -> None:
        transaction = hook(caller_transaction, "caller_transaction")
        with pytest.raises(InvalidRequest), transaction(harbor.driver) as conn:
            harbor.driver.enqueue_in(conn, [])
        assert harbor.snapshot() == ([], {})

    @requires("transactional_enqueue")
    def test_a_workflow_enqueued_in_a_transaction_exists_once_it_commits(
        self, harbor: Harbor, caller_transaction: CallerTransaction | None
    ) -> None:
        transaction = hook(caller_transaction, "caller_transaction")
        with transaction(harbor.driver) as conn:
            record = harbor.driver.enqueue_workflow_in(conn, order_chain(None))
            assert harbor.all_jobs() == [], "another connection saw a step before the commit"
            assert harbor.driver.list_workflows(WorkflowFilter()) == []
        assert harbor.driver.get_workflow(record.id) == record
        assert (record.state, record.created_at) == (WorkflowState.RUNNING, harbor.now())
        charge, ship = harbor.driver.get(list(record.steps))
        assert (charge.state, ship.state) == (JobState.AVAILABLE, JobState.PENDING)
        assert (charge.workflow_id, ship.depends_on) == (record.id, (charge.id,))
        harbor.finish(charge, result=7)
        assert harbor.get(ship.id).args == (7,)

    @requires("transactional_enqueue")
    def test_a_workflow_enqueued_in_a_transaction_rolled_back_never_exists(
        self, harbor: Harbor, caller_transaction: CallerTransaction | None
    ) -> None:
        transaction = hook(caller_transaction, "caller_transaction")
        with pytest.raises(RolledBack), transaction(harbor.driver) as conn:
            harbor.driver.enqueue_workflow_in(conn, order_chain(None))
            raise RolledBack
        assert harbor.snapshot() == ([], {})
        assert harbor.driver.list_workflows(WorkflowFilter()) == []

    @requires("transactional_enqueue", "workflow_idempotency")
    def test_a_workflow_key_held_by_a_stored_workflow_returns_it_in_a_transaction(
        self, harbor: Harbor, caller_transaction: CallerTransaction | None
    ) -> None:
        transaction = hook(caller_transaction, "caller_transaction")
        with pytest.raises(RolledBack), transaction(harbor.driver) as conn:
            harbor.driver.enqueue_workflow_in(conn, order_chain("order-1"))
            raise RolledBack
        assert harbor.driver.list_workflows(WorkflowFilter()) == [], "the rollback kept it"
        stored = harbor.driver.enqueue_workflow(order_chain("order-1"))  # never held before
        assert (stored.idempotency_key, len(harbor.all_jobs())) == ("order-1", 2)
        with transaction(harbor.driver) as conn:
            again = harbor.driver.enqueue_workflow_in(conn, order_chain("order-1"))
            same_transaction = harbor.driver.enqueue_workflow_in(conn, order_chain("order-2"))
            assert harbor.driver.enqueue_workflow_in(conn, order_chain("order-2")) == (
                same_transaction
            ), "a key held by a workflow of the same transaction"
        assert again == stored
        assert len(harbor.driver.list_workflows(WorkflowFilter())) == 2
        assert len(harbor.all_jobs()) == 4

    def test_a_driver_without_the_capability_refuses_enqueue_in(self, harbor: Harbor) -> None:
        if harbor.driver.capabilities.transactional_enqueue:
            pytest.skip("the driver declares transactional_enqueue: the rules above apply")
        with pytest.raises(InvalidRequest, match="transactional_enqueue"):
            harbor.driver.enqueue_in(object(), [EnqueueRequest("task")])
        with pytest.raises(InvalidRequest, match="transactional_enqueue"):
            harbor.driver.enqueue_workflow_in(object(), order_chain(None))
        assert harbor.snapshot() == ([], {})


def order_chain(key: str | None) -> WorkflowGraph:
    """charge, then ship with charge's result, each in a queue named after its task."""
    steps = (
        StepSpec(EnqueueRequest("charge", queue="charge")),
        StepSpec(EnqueueRequest("ship", queue="ship"), after=(0,), input=0),
    )
    return WorkflowGraph(steps, result=1, idempotency_key=key)
