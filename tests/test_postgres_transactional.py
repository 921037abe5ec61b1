"""Transactional enqueue: a job exists if and only if the caller's transaction commits."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from test_postgres_support import MakeDriver, make_driver

from driver_registry import POSTGRES_URL
from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.spec import Completion, EnqueueRequest, FakeClock, JobFilter, JobState

__all__ = ["make_driver"]

pytestmark = pytest.mark.postgres


class Rollback(Exception):
    """Raised inside a transaction block to roll the caller's transaction back."""


def all_jobs(driver: PostgresDriver) -> list[str]:
    return [job.task for job in driver.list_jobs(JobFilter())]


def test_a_rolled_back_transaction_leaves_no_job(make_driver: MakeDriver) -> None:
    driver = make_driver(clock=FakeClock())
    with psycopg.connect(POSTGRES_URL) as conn, pytest.raises(Rollback), conn.transaction():
        (result,) = driver.enqueue_in(conn, [EnqueueRequest("signup-email")])
        assert result.created
        assert all_jobs(driver) == []  # not visible outside the transaction
        raise Rollback
    assert all_jobs(driver) == []
    assert driver.lease(["default"], 10, 30, "w") == []


def test_a_committed_transaction_leaves_a_job_that_a_worker_runs(make_driver: MakeDriver) -> None:
    driver = make_driver(clock=FakeClock())
    with psycopg.connect(POSTGRES_URL) as conn, conn.transaction():
        conn.execute("SELECT 1")  # the caller's own work, in the same transaction
        (result,) = driver.enqueue_in(conn, [EnqueueRequest("signup-email", args=("a@b.c",))])
    (job,) = driver.lease(["default"], 10, 30, "w")
    assert (job.id, job.args, job.state) == (result.job.id, ("a@b.c",), JobState.RUNNING)
    assert driver.complete([Completion(job.id, job.lease_token or "", "sent")]) == []
    assert driver.get([job.id])[0].state is JobState.SUCCEEDED


def test_an_idempotency_key_is_held_only_once_committed(make_driver: MakeDriver) -> None:
    driver = make_driver(clock=FakeClock())
    request = EnqueueRequest("charge", idempotency_key="order-7")
    with psycopg.connect(POSTGRES_URL) as conn, pytest.raises(Rollback), conn.transaction():
        driver.enqueue_in(conn, [request])
        raise Rollback
    (first,) = driver.enqueue([request])
    with psycopg.connect(POSTGRES_URL) as conn, conn.transaction():
        (again,) = driver.enqueue_in(conn, [request])
    assert first.created and not again.created
    assert again.job.id == first.job.id


def test_async_enqueue_follows_the_async_transaction(make_driver: MakeDriver) -> None:
    driver = make_driver(clock=FakeClock())

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
            with pytest.raises(Rollback):
                async with conn.transaction():
                    await driver.enqueue_in_async(conn, [EnqueueRequest("rolled-back")])
                    raise Rollback
            async with conn.transaction():
                await driver.enqueue_in_async(conn, [EnqueueRequest("committed")])

    asyncio.run(scenario())
    assert all_jobs(driver) == ["committed"]
