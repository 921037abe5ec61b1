"""FastAPI and SQLAlchemy (``pip install 'taskharbor[fastapi]'``).

``lifespan(th_app)`` is a FastAPI lifespan that opens the TaskHarbor app's
store at startup (on a thread: opening connects and migrates) and closes it at
shutdown; ``FastAPI(lifespan=lifespan(th_app))``, or ``lifespan(th_app,
inner)`` around a lifespan of your own.

``connection(session)`` and ``await async_connection(session)`` give the
psycopg connection under a SQLAlchemy ``Session`` / ``AsyncSession`` (engines
on ``postgresql+psycopg://``), inside the session's transaction, for
``app.enqueue(..., connection=...)`` / ``await app.enqueue_async(...,
connection=...)``: the jobs and workflows a request enqueues exist if and only
if the request's transaction commits.  See docs/integrations.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

from . import missing

try:
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session
except ImportError as error:  # pragma: no cover - the message is what is tested
    raise missing("fastapi and sqlalchemy", "fastapi", __name__) from error

from taskharbor.spec import InvalidRequest

from ..app import App

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def lifespan(app: App, inner: Lifespan | None = None) -> Lifespan:
    """A FastAPI lifespan that opens ``app``'s store before serving and closes it after.

    ``inner`` (another lifespan) runs inside it, so its startup may enqueue.
    The app is also put on ``fastapi_app.state.taskharbor``.
    """

    @asynccontextmanager
    async def run(fastapi_app: FastAPI) -> AsyncIterator[Any]:
        await asyncio.to_thread(lambda: app.driver)  # opens (and migrates) a store given by URL
        fastapi_app.state.taskharbor = app
        try:
            async with nullcontext() if inner is None else inner(fastapi_app) as state:
                yield state
        finally:
            await asyncio.to_thread(app.close)

    return run


def connection(session: Session) -> Any:
    """The psycopg connection under ``session``, in the session's transaction (begun
    here if it has none yet)."""
    if not isinstance(session, Session):
        raise InvalidRequest(f"connection() needs a SQLAlchemy Session, not {session!r}")
    return _driver_connection(session.connection().connection.driver_connection)


async def async_connection(session: AsyncSession) -> Any:
    """The psycopg ``AsyncConnection`` under ``session``, in the session's transaction."""
    if not isinstance(session, AsyncSession):
        raise InvalidRequest(f"async_connection() needs a SQLAlchemy AsyncSession, not {session!r}")
    raw = await (await session.connection()).get_raw_connection()
    return _driver_connection(raw.driver_connection)


def _driver_connection(raw: Any) -> Any:
    module = type(raw).__module__
    if not module.startswith("psycopg"):
        raise InvalidRequest(
            f"the session's engine uses {module}, not psycopg 3: create it with a "
            "postgresql+psycopg:// URL to enqueue in its transactions"
        )
    return raw
