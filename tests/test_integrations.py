"""Web framework integrations on PostgreSQL: a request's jobs commit with its transaction.

The FastAPI example of docs/integrations.md runs as written; an app on an
async SQLAlchemy engine is driven through HTTP (FastAPI's TestClient) here.  (No
``from __future__ import annotations``: FastAPI reads the endpoints' annotations,
which name objects local to a test.)
"""

import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import psycopg
import pytest
from psycopg import sql
from test_engine_support import import_error_without
from test_postgres_support import drop_schema, unique_schema

from driver_registry import POSTGRES_URL, skip_without_postgres
from taskharbor import App, Worker, WorkflowHandle, chain

pytestmark = pytest.mark.postgres

PAGE = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


def example(marker: str) -> str:
    """The page's Python example that contains ``marker``, on the test database."""
    examples = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    (code,) = [code for code in examples if marker in code]
    return str(code).replace("postgresql://root@127.0.0.1:5432/test", POSTGRES_URL)


def test_the_fastapi_example_commits_the_order_with_its_workflow(tmp_path: Path) -> None:
    skip_without_postgres()
    script = tmp_path / "example.py"
    script.write_text(example("taskharbor.contrib.fastapi"))
    try:
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[:2] == ["[42] ['charge', 'ship']", "shipped 42"]
    finally:
        drop_schema("docs_fastapi")


@pytest.fixture
def schema() -> Iterator[str]:
    skip_without_postgres()
    name = unique_schema()
    try:
        yield name
    finally:
        drop_schema(name)


def test_an_async_sqlalchemy_session_enqueues_in_the_requests_transaction(schema: str) -> None:
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.testclient import TestClient
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    from taskharbor.contrib.fastapi import async_connection, lifespan

    jobs = App(f"{POSTGRES_URL}?schema={schema}")

    @jobs.task(name="charge")
    def charge(order_id: int) -> int:
        return order_id

    @jobs.task(name="ship")
    def ship(order_id: int) -> str:
        return f"shipped {order_id}"

    engine = create_async_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    sessions = async_sessionmaker(engine)
    orders = sql.Identifier(schema, "orders").as_string(None)

    async def session() -> AsyncIterator[AsyncSession]:
        async with sessions.begin() as opened:
            yield opened

    async def tables(_: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE TABLE {orders} (id int PRIMARY KEY)"))
        yield
        await engine.dispose()

    api = FastAPI(lifespan=lifespan(jobs, asynccontextmanager(tables)))

    @api.post("/orders/{order_id}")
    async def place(order_id: int, db: Annotated[AsyncSession, Depends(session)]) -> dict[str, int]:
        await db.execute(text(f"INSERT INTO {orders} VALUES (:id)"), {"id": order_id})
        handle = await jobs.enqueue_async(
            chain(charge.s(order_id), ship.s()),
            idempotency_key=f"order-{order_id}",
            connection=await async_connection(db),
        )
        if order_id == 13:
            raise HTTPException(status_code=409, detail="unlucky")
        return {"workflow": handle.id}

    with TestClient(api) as client:
        placed = client.post("/orders/42")
        refused = client.post("/orders/13")
        assert (placed.status_code, refused.status_code) == (200, 409)
        Worker(jobs).run(burst=True)
        assert WorkflowHandle(jobs, placed.json()["workflow"]).result() == "shipped 42"
        assert [job.args for job in jobs.list_jobs(task="charge")] == [(42,)]
    with psycopg.connect(POSTGRES_URL) as conn:
        assert [row[0] for row in conn.execute(f"SELECT id FROM {orders}")] == [42]


def test_the_integration_says_which_extra_is_missing() -> None:
    message = import_error_without("fastapi", "taskharbor.contrib.fastapi")
    assert "pip install 'taskharbor[fastapi]'" in message


def test_a_session_on_another_driver_is_refused() -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from taskharbor.contrib.fastapi import connection
    from taskharbor.spec import InvalidRequest

    with Session(create_engine("sqlite://")) as db, pytest.raises(InvalidRequest, match="psycopg"):
        connection(db)
