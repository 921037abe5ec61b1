"""Rules of ``Driver.enqueue_in``: jobs enqueued inside the caller's transaction.

They apply to a driver that declares ``transactional_enqueue`` and whose test
class gives the ``caller_transaction`` hook (a connection of the store's own
client library, with a transaction open on it, as the application has).
"""

from __future__ import annotations

import pytest

from taskharbor.spec import EnqueueRequest, InvalidRequest, JobFilter, JobState

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

    @requires("transactional_enqueue")
    def test_an_empty_batch_in_a_transaction_is_refused(
        self, harbor: Harbor, caller_transaction: CallerTransaction | None
    ) -> None:
        transaction = hook(caller_transaction, "caller_transaction")
        with pytest.raises(InvalidRequest), transaction(harbor.driver) as conn:
            harbor.driver.enqueue_in(conn, [])
        assert harbor.snapshot() == ([], {})

    def test_a_driver_without_the_capability_refuses_enqueue_in(self, harbor: Harbor) -> None:
        if harbor.driver.capabilities.transactional_enqueue:
            pytest.skip("the driver declares transactional_enqueue: the rules above apply")
        with pytest.raises(InvalidRequest, match="transactional_enqueue"):
            harbor.driver.enqueue_in(object(), [EnqueueRequest("task")])
        assert harbor.snapshot() == ([], {})
