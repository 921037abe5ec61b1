"""``app.enqueue(workflow, idempotency_key=...)`` on every driver: one workflow per key."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from test_engine_support import EVENTUALLY, Producer, burst, make_app

from driver_registry import POSTGRES_URL, DriverFactory, skip_without_postgres
from taskharbor.app import App
from taskharbor.canvas import Signature, Workflow, WorkflowHandle, chain
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite.schema import MIGRATIONS
from taskharbor.jobs import Job
from taskharbor.spec import (
    Capabilities,
    EnqueueRequest,
    InvalidRequest,
    StepSpec,
    WorkflowFilter,
    WorkflowGraph,
    WorkflowState,
)


def order_app(factory: DriverFactory) -> tuple[App, list[str]]:
    app = make_app(factory)
    done: list[str] = []

    @app.task(name="charge")
    def charge(order: int) -> int:
        done.append(f"charge {order}")
        return order

    @app.task(name="ship")
    def ship(order: int) -> str:
        done.append(f"ship {order}")
        return f"shipped {order}"

    return app, done


def enqueue_workflow(app: App, produce: Producer, flow: Workflow, **options: Any) -> WorkflowHandle:
    """``app.enqueue`` or its async twin, as the ``produce`` fixture's path says."""
    if produce.path == "enqueue":
        return app.enqueue(flow, **options)
    return asyncio.run(app.enqueue_async(flow, **options))


def wait_for(handle: WorkflowHandle, produce: Producer) -> WorkflowState:
    """``handle.wait`` or its async twin, as the ``produce`` fixture's path says."""
    if produce.path == "enqueue":
        return handle.wait(timeout=EVENTUALLY)
    return asyncio.run(handle.wait_async(timeout=EVENTUALLY))


def test_a_repeated_workflow_key_returns_the_first_workflow(
    driver_factory: DriverFactory, produce: Producer
) -> None:
    app, done = order_app(driver_factory)
    if not app.driver.capabilities.workflow_idempotency:
        pytest.skip(f"{type(app.driver).__name__} does not declare workflow_idempotency")
    flow = chain(app.tasks["charge"].s(7), app.tasks["ship"].s())
    first = enqueue_workflow(app, produce, flow, idempotency_key="order-7", name="order")
    again = enqueue_workflow(app, produce, flow, idempotency_key="order-7", name="order")
    assert again.id == first.id
    burst(app)
    assert wait_for(first, produce) == WorkflowState.SUCCEEDED
    assert done == ["charge 7", "ship 7"]
    assert first.result() == "shipped 7"
    finished = enqueue_workflow(app, produce, flow, idempotency_key="order-7")
    assert (finished.id, finished.status().state) == (first.id, WorkflowState.SUCCEEDED)
    assert app.driver.get_workflow(first.id).idempotency_key == "order-7"


def test_enqueue_many_stores_every_job_in_one_call(
    driver_factory: DriverFactory, produce: Producer
) -> None:
    app, _ = order_app(driver_factory)
    charge = app.tasks["charge"]
    jobs = enqueue_many(app, produce, [charge.s(1), charge.s(2).options(priority=5)])
    assert [(job.args, job.priority) for job in jobs] == [((1,), 0), ((2,), 5)]
    with pytest.raises(InvalidRequest, match="nothing to enqueue"):
        enqueue_many(app, produce, [])
    assert len(app.list_jobs()) == 2


def enqueue_many(app: App, produce: Producer, signatures: list[Signature]) -> list[Job]:
    """``app.enqueue_many`` or its async twin, as the ``produce`` fixture's path says."""
    if produce.path == "enqueue":
        return app.enqueue_many(signatures)
    return asyncio.run(app.enqueue_many_async(signatures))


def test_waiting_for_a_running_workflow_times_out(
    driver_factory: DriverFactory, produce: Producer
) -> None:
    app, _ = order_app(driver_factory)
    handle = enqueue_workflow(app, produce, chain(app.tasks["charge"].s(1), app.tasks["ship"].s()))
    with pytest.raises(TimeoutError, match=f"workflow {handle.id} still running"):
        if produce.path == "enqueue":
            handle.wait(timeout=0.01)
        else:
            asyncio.run(handle.wait_async(timeout=0.01))


def test_a_signature_takes_the_key_as_its_jobs_key(driver_factory: DriverFactory) -> None:
    app, _ = order_app(driver_factory)
    job = app.enqueue(app.tasks["charge"].s(1), idempotency_key="charge-1")
    again = app.enqueue(app.tasks["charge"].s(2), idempotency_key="charge-1")
    assert (again.id, again.args, job.idempotency_key) == (job.id, (1,), "charge-1")


def test_a_store_without_workflow_keys_refuses_a_keyed_workflow() -> None:
    class NoWorkflowKeys(MemoryDriver):
        capabilities = Capabilities(schedules=True)

    app = App(driver=NoWorkflowKeys())

    @app.task(name="charge")
    def charge(order: int) -> int:
        return order

    with pytest.raises(InvalidRequest, match="workflow_idempotency"):
        app.enqueue(chain(charge.s(1), charge.si(2)), idempotency_key="order-1")
    assert app.list_jobs() == []


def test_a_sqlite_store_from_before_workflow_keys_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    before = next(
        version
        for version, steps in enumerate(MIGRATIONS)
        if any("workflows_idempotency_key" in statement for statement in steps)
    )
    with sqlite3.connect(path) as raw:  # a store as the version before workflow keys left it
        for steps in MIGRATIONS[:before]:
            for statement in steps:
                raw.execute(statement)
        raw.execute(
            "INSERT INTO taskharbor_meta (key, value) VALUES ('schema_version', ?)", (str(before),)
        )
        raw.execute(
            "INSERT INTO workflows (name, state, result, created_at) "
            "VALUES ('old', 'running', 'null', 0)"
        )
    raw.close()
    upgraded = SQLiteDriver(path)
    try:
        (old_workflow,) = upgraded.list_workflows(WorkflowFilter())
        assert (old_workflow.name, old_workflow.idempotency_key) == ("old", None)
        keyed = upgraded.enqueue_workflow(one_step_graph("order-1"))
        assert upgraded.enqueue_workflow(one_step_graph("order-1")) == keyed
    finally:
        upgraded.close()


@pytest.mark.postgres
def test_a_postgres_schema_from_before_workflow_keys_gets_them() -> None:
    skip_without_postgres()
    from taskharbor.drivers.postgres import PostgresDriver

    schema = f"th_workflow_keys_{uuid.uuid4().hex[:8]}"
    driver = PostgresDriver(POSTGRES_URL, schema=schema, notifications=False)
    try:
        driver.migrate()
        old_workflow = driver.enqueue_workflow(one_step_graph(None))
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            workflows = sql.Identifier(schema, "workflows")
            conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN idempotency_key").format(workflows))
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE version = 4").format(
                    sql.Identifier(schema, "schema_migrations")
                )
            )
        upgraded = PostgresDriver(POSTGRES_URL, schema=schema, notifications=False)
        try:
            upgraded.migrate()
            assert upgraded.get_workflow(old_workflow.id).idempotency_key is None
            keyed = upgraded.enqueue_workflow(one_step_graph("order-1"))
            assert upgraded.enqueue_workflow(one_step_graph("order-1")) == keyed
        finally:
            upgraded.close()
    finally:
        driver.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def one_step_graph(key: str | None) -> WorkflowGraph:
    return WorkflowGraph((StepSpec(EnqueueRequest("charge")),), result=0, idempotency_key=key)
