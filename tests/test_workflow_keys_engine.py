"""``app.enqueue(workflow, idempotency_key=...)`` on every driver: one workflow per key."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from test_engine_support import burst, make_app

from driver_registry import POSTGRES_URL, DriverFactory, skip_without_postgres
from taskharbor.app import App
from taskharbor.canvas import chain
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite.schema import MIGRATIONS
from taskharbor.spec import (
    Capabilities,
    EnqueueRequest,
    InvalidRequest,
    StepSpec,
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


def test_a_repeated_workflow_key_returns_the_first_workflow(driver_factory: DriverFactory) -> None:
    app, done = order_app(driver_factory)
    flow = chain(app.tasks["charge"].s(7), app.tasks["ship"].s())
    first = app.enqueue(flow, idempotency_key="order-7", name="order")
    again = app.enqueue(flow, idempotency_key="order-7", name="order")
    assert again.id == first.id
    burst(app)
    assert done == ["charge 7", "ship 7"]
    assert first.result() == "shipped 7"
    finished = app.enqueue(flow, idempotency_key="order-7")
    assert (finished.id, finished.status().state) == (first.id, WorkflowState.SUCCEEDED)
    assert app.driver.get_workflow(first.id).idempotency_key == "order-7"


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
    driver = SQLiteDriver(path)
    old_workflow = driver.enqueue_workflow(one_step_graph(None))
    driver.close()
    with sqlite3.connect(path) as raw:  # back to the schema before workflow keys
        raw.execute("DROP INDEX workflows_idempotency_key")
        raw.execute("ALTER TABLE workflows DROP COLUMN idempotency_key")
        version = str(len(MIGRATIONS) - 1)
        raw.execute("UPDATE taskharbor_meta SET value = ? WHERE key = 'schema_version'", (version,))
    upgraded = SQLiteDriver(path)
    try:
        assert upgraded.get_workflow(old_workflow.id).idempotency_key is None
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
