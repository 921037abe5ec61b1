"""Transactional enqueue through th.App: jobs and workflows exist iff the caller commits.

Each test runs on PostgreSQL (a psycopg connection) and on SQLite (a sqlite3
connection to the store's file), with an ``orders`` table of the
application's own in the same database, written in the same transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql
from test_postgres_support import drop_schema, unique_schema

from driver_registry import POSTGRES_URL, skip_without_postgres
from taskharbor.app import App
from taskharbor.canvas import chain
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.jobs import Job
from taskharbor.middleware import EnqueueCall, Middleware, WorkflowCall
from taskharbor.spec import (
    EnqueueRequest,
    InvalidRequest,
    WorkflowFilter,
    WorkflowGraph,
    WorkflowRecord,
)


class Rollback(Exception):
    """Raised inside the caller's transaction so that it rolls back."""


class Store:
    """An app on one database, and the application's own connections to it."""

    def __init__(self, app: App) -> None:
        self.app = app

        @app.task(name="charge")
        def charge(order: int) -> int:
            return order

        @app.task(name="ship")
        def ship(order: int) -> str:
            return f"shipped {order}"

    def begin(self) -> AbstractContextManager[Any]:
        """The application's connection, in a transaction committed at the end of the
        block (rolled back if it raises)."""
        raise NotImplementedError

    def savepoint(self, conn: Any) -> AbstractContextManager[None]:
        raise NotImplementedError

    def add_order(self, conn: Any, order: int) -> None:
        raise NotImplementedError

    def orders(self) -> list[int]:
        raise NotImplementedError

    def workflows(self) -> list[WorkflowRecord]:
        return self.app.driver.list_workflows(WorkflowFilter())

    def jobs(self) -> list[str]:
        return [job.task for job in self.app.list_jobs()]

    def order_flow(self, order: int) -> Any:
        return chain(self.app.tasks["charge"].s(order), self.app.tasks["ship"].s())


class PostgresStore(Store):
    def __init__(self, schema: str) -> None:
        self.schema = schema
        super().__init__(App(f"{POSTGRES_URL}?schema={schema}"))
        self.app.driver.migrate()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(self._table))

    @property
    def _table(self) -> sql.Identifier:
        return sql.Identifier(self.schema, "orders")

    @contextmanager
    def begin(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(POSTGRES_URL) as conn, conn.transaction():
            yield conn

    def savepoint(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        return conn.transaction()

    def add_order(self, conn: psycopg.Connection[Any], order: int) -> None:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(self._table), (order,))

    def orders(self) -> list[int]:
        with psycopg.connect(POSTGRES_URL) as conn:
            rows = conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(self._table))
            return [row[0] for row in rows]


class SQLiteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(App(f"sqlite:///{path}"))
        self.app.driver.migrate()
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE orders (id INTEGER)")

    @contextmanager
    def begin(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path)
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
        finally:
            conn.close()

    @contextmanager
    def savepoint(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("SAVEPOINT app")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO app")
            raise
        finally:
            conn.execute("RELEASE app")

    def add_order(self, conn: sqlite3.Connection, order: int) -> None:
        conn.execute("INSERT INTO orders VALUES (?)", (order,))

    def orders(self) -> list[int]:
        with sqlite3.connect(self.path) as conn:
            return [row[0] for row in conn.execute("SELECT id FROM orders ORDER BY id")]


@contextmanager
def fresh_postgres_store() -> Iterator[PostgresStore]:
    """A :class:`PostgresStore` on a schema of its own, dropped afterwards."""
    skip_without_postgres()
    schema = unique_schema()
    chosen = PostgresStore(schema)
    try:
        yield chosen
    finally:
        chosen.app.close()
        drop_schema(schema)


@pytest.fixture(params=["postgres", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgres":
        with fresh_postgres_store() as on_postgres:
            yield on_postgres
        return
    on_sqlite = SQLiteStore(tmp_path / "orders.db")
    yield on_sqlite
    on_sqlite.app.close()


def test_an_order_and_its_workflow_exist_once_the_transaction_commits(store: Store) -> None:
    app = store.app
    with store.begin() as conn:
        store.add_order(conn, 7)
        handle = app.enqueue(store.order_flow(7), idempotency_key="order-7", connection=conn)
        job = app.enqueue(app.tasks["charge"].s(8), connection=conn)
        assert (store.orders(), store.jobs(), store.workflows()) == ([], [], [])
    assert store.orders() == [7]
    assert [w.id for w in store.workflows()] == [handle.id]
    assert store.jobs() == ["charge", "ship", "charge"]
    assert app.get_job(job).args == (8,)


def test_a_rollback_leaves_no_order_no_job_and_no_workflow(store: Store) -> None:
    app = store.app
    with pytest.raises(Rollback), store.begin() as conn:
        store.add_order(conn, 7)
        with app.using(conn):
            app.enqueue(store.order_flow(7), idempotency_key="order-7")
            app.tasks["charge"].enqueue(9)
            app.enqueue_many([app.tasks["charge"].s(10), app.tasks["charge"].s(11)])
        raise Rollback
    assert (store.orders(), store.jobs(), store.workflows()) == ([], [], [])
    again = app.enqueue(store.order_flow(7), idempotency_key="order-7")  # the key was not held
    assert [w.id for w in store.workflows()] == [again.id]


def test_a_rolled_back_savepoint_takes_only_its_own_enqueues(store: Store) -> None:
    app = store.app
    with store.begin() as conn:
        store.add_order(conn, 1)
        app.enqueue(store.order_flow(1), connection=conn)
        with pytest.raises(Rollback), store.savepoint(conn):
            store.add_order(conn, 2)
            app.enqueue(store.order_flow(2), idempotency_key="order-2", connection=conn)
            raise Rollback
    assert store.orders() == [1]
    assert [app.get_job(job_id).args for job_id in store.workflows()[0].steps] == [(1,), ()]
    assert len(store.workflows()) == 1


def test_a_held_workflow_key_returns_the_workflow_in_the_transaction(store: Store) -> None:
    app = store.app
    first = app.enqueue(store.order_flow(7), idempotency_key="order-7")
    with store.begin() as conn:
        again = app.enqueue(store.order_flow(7), idempotency_key="order-7", connection=conn)
    assert again.id == first.id
    assert len(store.workflows()) == 1


def test_transactional_enqueues_go_through_the_middleware(store: Store) -> None:
    seen: list[str] = []

    class Record(Middleware):
        def around_enqueue(
            self, requests: Sequence[EnqueueRequest], call_next: EnqueueCall
        ) -> list[Job]:
            seen.extend(request.task for request in requests)
            return call_next(requests)

        def around_enqueue_workflow(
            self, graph: WorkflowGraph, call_next: WorkflowCall
        ) -> WorkflowRecord:
            seen.append(f"workflow {graph.idempotency_key}")
            return call_next(graph)

    store.app.use(Record())
    with pytest.raises(Rollback), store.begin() as conn, store.app.using(conn):
        store.app.tasks["charge"].enqueue(1)
        store.app.enqueue(store.order_flow(1), idempotency_key="order-1")
        raise Rollback
    assert seen == ["charge", "workflow order-1"]
    assert store.jobs() == []


def test_a_store_without_transactional_enqueue_refuses_a_connection() -> None:
    app = App(driver=MemoryDriver())

    @app.task(name="charge")
    def charge(order: int) -> int:
        return order

    with pytest.raises(InvalidRequest, match="transactional_enqueue"):
        app.enqueue(charge.s(1), connection=object())
    with pytest.raises(InvalidRequest, match="transactional_enqueue"), app.using(object()):
        pass
    assert app.list_jobs() == []


def test_a_sqlite_connection_to_another_file_is_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    other = sqlite3.connect(tmp_path / "other.db")
    try:
        with pytest.raises(InvalidRequest, match=r"other\.db"):
            store.app.enqueue(store.app.tasks["charge"].s(1), connection=other)
        assert not other.in_transaction
    finally:
        other.close()
        store.app.close()


# -- PostgreSQL only: isolation levels and asynchronous connections ----------------


@pytest.fixture
def postgres_store() -> Iterator[PostgresStore]:
    with fresh_postgres_store() as on_postgres:
        yield on_postgres


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("target", ["job", "workflow"])
def test_a_key_committed_after_the_callers_snapshot_is_a_serialization_failure(
    postgres_store: PostgresStore, level: str, target: str
) -> None:
    """The documented outcome: retry the transaction, and the retry finds the holder."""
    store = postgres_store
    app = store.app

    def enqueue(conn: psycopg.Connection[Any] | None) -> int:
        if target == "job":
            return app.enqueue(app.tasks["charge"].s(7), idempotency_key="k", connection=conn).id
        return app.enqueue(store.order_flow(7), idempotency_key="k", connection=conn).id

    with psycopg.connect(POSTGRES_URL) as conn:
        conn.isolation_level = psycopg.IsolationLevel[level.replace(" ", "_")]
        with pytest.raises(pg_errors.SerializationFailure), conn.transaction():
            store.orders()  # another connection: nothing of the caller's yet
            conn.execute("SELECT 1")  # the caller's snapshot is taken here
            held = enqueue(None)  # committed by another producer after it
            store.add_order(conn, 7)
            enqueue(conn)
        with conn.transaction():  # the caller retries its transaction
            store.add_order(conn, 7)
            assert enqueue(conn) == held
    assert store.orders() == [7]
    assert len(store.jobs()) == (1 if target == "job" else 2)


@pytest.mark.parametrize("path", ["sync connection", "async connection"])
def test_async_producers_enqueue_in_the_callers_transaction(
    postgres_store: PostgresStore, path: str
) -> None:
    """enqueue_async and enqueue_many_async: twins of the sync tests above, on a sync
    connection (the store call on a thread) and on an AsyncConnection of the loop."""
    store = postgres_store
    app = store.app
    charge = app.tasks["charge"]

    async def produce(conn: Any, order: int) -> None:
        with app.using(conn):
            await app.enqueue_async(store.order_flow(order), idempotency_key=f"order-{order}")
            await charge.enqueue_async(order)
        await app.enqueue_many_async([charge.s(order), charge.s(order)], connection=conn)

    async def scenario_async() -> None:
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
            with pytest.raises(Rollback):
                async with conn.transaction():
                    await produce(conn, 1)
                    raise Rollback
            async with conn.transaction():
                await produce(conn, 2)
                assert store.jobs() == []

    async def scenario_sync() -> None:
        with psycopg.connect(POSTGRES_URL) as conn:
            with pytest.raises(Rollback), conn.transaction():
                await produce(conn, 1)
                raise Rollback
            with conn.transaction():
                await produce(conn, 2)
                assert store.jobs() == []

    asyncio.run(scenario_async() if path == "async connection" else scenario_sync())
    assert store.jobs() == ["charge", "ship", "charge", "charge", "charge"]
    assert [job.args for job in app.list_jobs(task="charge")] == [(2,)] * 4
    assert [w.idempotency_key for w in store.workflows()] == ["order-2"]


def test_an_async_connection_in_sync_code_on_its_loop_is_refused(
    postgres_store: PostgresStore,
) -> None:
    app = postgres_store.app

    async def scenario() -> None:
        async with (
            await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn,
            conn.transaction(),
        ):
            with app.using(conn), pytest.raises(InvalidRequest, match="enqueue_async"):
                app.tasks["charge"].enqueue(1)

    asyncio.run(scenario())
    with pytest.raises(InvalidRequest, match="event loop"):
        app.using(psycopg.AsyncConnection.__new__(psycopg.AsyncConnection)).__enter__()
    assert postgres_store.jobs() == []
