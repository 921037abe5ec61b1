"""How ``App.wait`` and ``WorkflowHandle.wait`` sleep between two reads of the store.

A store with the ``notifications`` capability wakes a waiter when one of its
jobs finishes (``Driver.wait_for_finished``), so the waiter sleeps until then,
however long the wait, and reads the store once more.  Without it the waiter
polls: ``wait_for_finished`` of such a store sleeps the poll pause.

The async waits run the blocking call on a thread of their own, not on the
event loop's default executor: many coroutines waiting at once must not take
every thread that ``asyncio.to_thread`` calls of the application need.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence

from taskharbor.spec import Driver, JobId

LONGEST_SLEEP = 30.0
"""The longest a sync waiter sleeps in one call before it reads the store again."""

LONGEST_ASYNC_SLEEP = 5.0
"""The same for an async waiter: a cancelled one leaves its thread asleep for at most this."""


def sleep_until_finished(
    driver: Driver, job_ids: Sequence[JobId], pause: float, deadline: float | None
) -> None:
    """Sleep until one of ``job_ids`` may have finished: until the store says so when it
    notifies, else ``pause`` seconds; never past ``deadline`` (a ``time.monotonic`` instant)."""
    driver.wait_for_finished(job_ids, sleep_length(driver, pause, deadline, LONGEST_SLEEP))


async def sleep_until_finished_async(
    driver: Driver, job_ids: Sequence[JobId], pause: float, deadline: float | None
) -> None:
    """:func:`sleep_until_finished` for event loops: the loop is never blocked."""
    seconds = sleep_length(driver, pause, deadline, LONGEST_ASYNC_SLEEP)
    if driver.capabilities.notifications:
        await on_own_thread(lambda: driver.wait_for_finished(job_ids, seconds))
    else:
        await asyncio.sleep(seconds)


def sleep_length(driver: Driver, pause: float, deadline: float | None, longest: float) -> float:
    """How long the next sleep may last: a notifying store's waiter sleeps up to the
    deadline (at most ``longest``), a polling one ``pause``, cut to the deadline."""
    length = longest if driver.capabilities.notifications else pause
    if deadline is not None:
        length = min(length, deadline - time.monotonic())
    return max(0.0, length)


async def on_own_thread(call: Callable[[], None]) -> None:
    """Run the blocking ``call`` on a new daemon thread and await its end."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():  # the awaiting coroutine was cancelled
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            call()
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="taskharbor-wait", daemon=True).start()
    await done
