"""Enqueue on the caller's own database connection, inside the caller's transaction.

``app.using(conn)`` (or ``connection=conn`` on each enqueue) puts a
connection in a context variable of the app; the app's store calls then go
to ``Driver.enqueue_in`` / ``enqueue_workflow_in`` on it instead of the
driver's own connections, after the enqueue middleware like any other
enqueue.  A context variable follows the code that set it: the thread, or the
asyncio task and the threads ``asyncio.to_thread`` starts from it, so the
async producer forms (which store on a thread) see it too.

An asynchronous connection (psycopg's ``AsyncConnection``) can only be used
on its event loop: the store call, made on a thread, hands the driver's
coroutine (``enqueue_in_async`` / ``enqueue_workflow_in_async``) to that loop
and waits for it, while the loop itself awaits the thread.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from taskharbor.spec import (
    Driver,
    EnqueueRequest,
    EnqueueResult,
    InvalidRequest,
    WorkflowGraph,
    WorkflowRecord,
)

T = TypeVar("T")


@runtime_checkable
class AsyncTransactional(Protocol):
    """A driver that enqueues on an asynchronous connection of its client library."""

    async def enqueue_in_async(
        self, conn: Any, requests: Sequence[EnqueueRequest]
    ) -> list[EnqueueResult]: ...

    async def enqueue_workflow_in_async(
        self, conn: Any, graph: WorkflowGraph
    ) -> WorkflowRecord: ...


@dataclass(frozen=True, slots=True)
class OnLoop:
    """An asynchronous connection and the event loop it belongs to."""

    connection: Any
    loop: asyncio.AbstractEventLoop

    def run(self, call: Coroutine[Any, Any, T]) -> T:
        """Run ``call`` on the connection's loop from another thread and return its result."""
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is self.loop:
            call.close()
            raise InvalidRequest(
                "an asynchronous connection cannot be used by a synchronous enqueue on its "
                "own event loop: use the async form (enqueue_async, enqueue_many_async, "
                "task.enqueue_async)"
            )
        return asyncio.run_coroutine_threadsafe(call, self.loop).result()


def bind(driver: Driver, connection: object) -> object:
    """What the app keeps for ``connection``: itself, or an async one with its loop.

    Refuses a store that cannot enqueue in the caller's transaction, and an
    asynchronous connection outside a running event loop.
    """
    if connection is None:
        raise InvalidRequest("a connection is needed to enqueue in the caller's transaction")
    if not driver.capabilities.transactional_enqueue:
        raise InvalidRequest(
            f"{type(driver).__name__} does not declare capability 'transactional_enqueue': "
            "it cannot enqueue inside the caller's transaction"
        )
    if not _is_async(connection):
        return connection
    if not isinstance(driver, AsyncTransactional):
        raise InvalidRequest(
            f"{type(driver).__name__} cannot enqueue on an asynchronous connection "
            f"({type(connection).__name__})"
        )
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise InvalidRequest(
            f"an asynchronous connection ({type(connection).__name__}) is used from its "
            "event loop: enter app.using(...) in async code"
        ) from None
    return OnLoop(connection, loop)


def enqueue_in(
    driver: Driver, bound: object, requests: list[EnqueueRequest]
) -> list[EnqueueResult]:
    """``requests`` stored in the caller's transaction on ``bound`` (see :func:`bind`)."""
    if isinstance(bound, OnLoop):
        assert isinstance(driver, AsyncTransactional)
        return bound.run(driver.enqueue_in_async(bound.connection, requests))
    return driver.enqueue_in(bound, requests)


def enqueue_workflow_in(driver: Driver, bound: object, graph: WorkflowGraph) -> WorkflowRecord:
    """``graph`` stored in the caller's transaction on ``bound`` (see :func:`bind`)."""
    if isinstance(bound, OnLoop):
        assert isinstance(driver, AsyncTransactional)
        return bound.run(driver.enqueue_workflow_in_async(bound.connection, graph))
    return driver.enqueue_workflow_in(bound, graph)


def _is_async(connection: object) -> bool:
    """Whether ``connection`` is an asyncio client's (its ``commit`` is a coroutine function)."""
    return inspect.iscoroutinefunction(getattr(connection, "commit", None))
