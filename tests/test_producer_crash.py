"""A producer killed with SIGKILL between its INSERT and its COMMIT leaves nothing.

The producer (tests/producer_crash_app.py) writes an order row, the order's
workflow and a job in one transaction of its own connection, then is killed
before it commits: the store must then hold no order, no job and no
workflow, and the order's idempotency key must be free, so the producer's
retry creates the order and its chain exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from test_postgres_support import drop_schema, unique_schema

from driver_registry import POSTGRES_URL, skip_without_postgres
from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.spec import JobFilter, WorkflowFilter

pytestmark = pytest.mark.postgres

PRODUCER = Path(__file__).with_name("producer_crash_app.py")


@pytest.fixture
def schema() -> Iterator[str]:
    skip_without_postgres()
    name = unique_schema()
    driver = PostgresDriver(POSTGRES_URL, schema=name, notifications=False)
    driver.migrate()
    driver.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(name, "orders")))
    try:
        yield name
    finally:
        drop_schema(name)


def producer(schema: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PRODUCER), POSTGRES_URL, schema, "42", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )


def stored(schema: str) -> tuple[list[int], list[str], list[str | None]]:
    """The orders, the jobs' tasks and the workflows' keys, as another connection sees them."""
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(schema, "orders")))
        orders = [row[0] for row in rows]
    driver = PostgresDriver(POSTGRES_URL, schema=schema, notifications=False)
    try:
        jobs = [job.task for job in driver.list_jobs(JobFilter())]
        keys = [w.idempotency_key for w in driver.list_workflows(WorkflowFilter())]
    finally:
        driver.close()
    return orders, jobs, keys


def test_a_producer_killed_before_its_commit_leaves_no_order_job_or_workflow(
    schema: str,
) -> None:
    killed = producer(schema)
    assert killed.stdout is not None
    assert killed.stdout.readline().strip() == "inserted"
    assert stored(schema) == ([], [], []), "another connection saw uncommitted rows"
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    assert stored(schema) == ([], [], [])

    retried = producer(schema, "--commit")
    out, _ = retried.communicate(timeout=60)
    assert (retried.returncode, out.split()) == (0, ["committed"])
    assert stored(schema) == ([42], ["charge", "ship", "charge"], ["order-42"])
