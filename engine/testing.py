"""A testing kit for applications built on TaskHarbor.

:class:`Harness` puts an app on a fresh in-memory store with a clock that only
moves when told, and runs jobs inline with :meth:`Harness.drain`.  It goes
through the real contract (leases, retries with their backoff, snoozes,
workflow releases, the dead-letter queue, task timeouts); only the waiting is
taken out::

    from taskharbor.testing import Harness

    def test_welcome_mail_is_sent():
        with Harness(app) as harness:
            sign_up("ada@example.com")
            harness.assert_enqueued(send_welcome, "ada@example.com")
            harness.drain()
            assert harness.jobs(send_welcome)[0].state == "succeeded"

Periodic schedules (``app.periodic``) run with :meth:`Harness.run_ticks`,
which moves the clock from tick to tick and runs each tick's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from taskharbor.spec import (
    Completion,
    Driver,
    FakeClock,
    JobRecord,
    JobState,
    SnoozeRequest,
)

from . import events, execution
from .app import App
from .context import JobContext
from .execution import Outcome
from .jobs import Job
from .periodic import Ticker
from .task import Task

HARNESS_LEASE_SECONDS = 3600.0
"""Leases taken by :meth:`Harness.drain`: the fake clock does not move while a job runs."""
LIST_LIMIT = 100_000


class Harness:
    """An app on a fresh memory store with a :class:`~taskharbor.spec.FakeClock`.

    Use it as a context manager (or call :meth:`close`) to give the app its
    own store back.  ``clock`` is the store's clock: move it with
    :meth:`advance`, or let ``drain(advance_time=True)`` jump to each due job.

    What it does as a worker does: outcomes, retry times, ``retry_on`` and
    ``no_retry_on``, snoozes, unknown tasks, results that are not JSON, the
    job middleware, and task timeouts (in real seconds, as a worker counts
    them: an ``async`` handler is cancelled; a sync one gets its cancellation
    flag set and the attempt fails with ``Timeout`` once it returns).

    What it cannot do, by design:

    * run jobs concurrently: one job at a time, in the calling thread (a sync
      handler with a timeout runs there too; the flag is set from a timer);
    * cancel a running job: ``app.cancel`` on a job that is running (from its
      own handler, say) ends it ``cancelled`` when it is reported, as with a
      worker, but its cancellation flag is not set while it runs (no
      heartbeats deliver the request);
    * expire leases or rescue crashed attempts (its leases outlast any test);
    * transactional enqueue: the store is a memory store, so driver-specific
      calls such as PostgreSQL's ``app.driver.enqueue_in(conn, ...)`` do not
      exist on it; test those against a PostgreSQL store with a real worker.
    """

    def __init__(self, app: App, *, clock: FakeClock | None = None) -> None:
        from taskharbor.drivers.memory import MemoryDriver

        self.app = app
        self.clock = clock or FakeClock()
        # The app's own store is not opened (a test needs no database): it is set aside.
        self._original: tuple[Driver | None, Callable[[], Driver] | None] | None = app._swap_driver(
            MemoryDriver(clock=self.clock)
        )
        self._ticker = Ticker(app)

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Give the app its own store back."""
        if self._original is not None:
            self.app.driver.close()
            self.app._restore_driver(self._original)
            self._original = None

    # -- time ------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the fake clock forward (scheduled jobs and retries become due)."""
        self.clock.advance(seconds)

    # -- running ---------------------------------------------------------------------

    def run_ticks(self, seconds: float) -> list[Job]:
        """Move the clock ``seconds`` forward tick by tick, running each tick's jobs.

        At every tick of the app's periodic schedules in the window the clock
        stops on the tick, the due ticks are enqueued as a worker would, and
        :meth:`drain` runs the ready jobs; then the clock goes on to the end
        of the window.  Returns the attempts' jobs as they ended, in order.
        """
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        end = self.clock.now() + timedelta(seconds=seconds)
        ran: list[Job] = []
        while True:
            ticked = self._ticker.run()
            ran += self.drain()
            upcoming = None if ticked is None else ticked.next_tick
            if upcoming is None or upcoming > end:
                break
            self.clock.set(upcoming)
        self.clock.set(end)
        self._ticker.run()
        return ran + self.drain()

    def drain(self, *, advance_time: bool = False, max_jobs: int = 10_000) -> list[Job]:
        """Run every ready job inline, one at a time, until none is ready.

        Jobs made ready by the ones that ran (workflow steps, retries without
        backoff) run too.  With ``advance_time`` the clock jumps to each
        scheduled or retrying job's time as well, so every retry and delay is
        followed to its end.  Returns the attempts' jobs as they ended.
        ``async`` handlers run on a fresh event loop (use :meth:`drain_async`
        from async tests).  Task timeouts are enforced in real seconds.
        """
        ran: list[Job] = []
        while (record := self._next(advance_time)) is not None:
            self._check_budget(ran, max_jobs)
            task, context = self._prepare(record)
            started_at = time.time()
            if task is None:
                outcome: Outcome = execution.unknown_task(record)
            elif task.is_async:
                outcome = asyncio.run(self._call_async(task, record, context))
            else:
                outcome = self._call_sync(task, record, context)
            ran.append(self._report(record, outcome, context if task else None, started_at))
        return ran

    async def drain_async(self, *, advance_time: bool = False, max_jobs: int = 10_000) -> list[Job]:
        """:meth:`drain` for async tests: async handlers run on the current loop."""
        ran: list[Job] = []
        while (record := self._next(advance_time)) is not None:
            self._check_budget(ran, max_jobs)
            task, context = self._prepare(record)
            started_at = time.time()
            if task is None:
                outcome: Outcome = execution.unknown_task(record)
            elif task.is_async:
                outcome = await self._call_async(task, record, context)
            else:
                outcome = self._call_sync(task, record, context)
            ran.append(self._report(record, outcome, context if task else None, started_at))
        return ran

    @staticmethod
    def _check_budget(ran: list[Job], max_jobs: int) -> None:
        if len(ran) >= max_jobs:
            raise RuntimeError(
                f"drain ran {max_jobs} jobs and more are ready: a job that keeps "
                "enqueueing or snoozing itself? (raise max_jobs if this is expected)"
            )

    def _queues(self) -> list[str]:
        queues = {task.defaults.queue for task in self.app.tasks.values()}
        queues.update(queue for queue, _ in self.app.driver.count())
        return sorted(queues) or ["default"]

    def _next(self, advance_time: bool) -> JobRecord | None:
        driver = self.app.driver
        while True:
            driver.rescue()
            due = driver.promote().next_due
            leased = driver.lease(self._queues(), 1, HARNESS_LEASE_SECONDS, "harness")
            if leased:
                return leased[0]
            if not advance_time or due is None:
                return None
            self.clock.set(due)

    def _prepare(self, record: JobRecord) -> tuple[Task[Any] | None, JobContext]:
        task = self.app.get_task(record.task)
        timeout = task.defaults.timeout if task is not None else None
        return task, execution.context_for(record, timeout, self.clock.now())

    def _call_sync(self, task: Task[Any], record: JobRecord, context: JobContext) -> Outcome:
        """Run a sync handler here; past its timeout a timer sets its cancellation flag, and
        the attempt fails with ``Timeout`` when it returns (a worker cannot stop a thread
        either)."""
        timeout = task.defaults.timeout
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, context.cancel_event.set)
            timer.daemon = True
            timer.start()
        error: Exception | None = None
        try:
            value = execution.call_sync(task, record, context, self.app.middleware)
        except Exception as exc:
            error = exc
        finally:
            if timer is not None:
                timer.cancel()
        if timer is not None and context.cancelled:  # only the timer sets the flag here
            return execution.timed_out(record, task, self.clock.now())
        if error is not None:
            return execution.outcome_of_error(error, record, task, self.clock.now())
        return execution.outcome_of_value(value, task)

    async def _call_async(self, task: Task[Any], record: JobRecord, context: JobContext) -> Outcome:
        """Await an ``async`` handler; past its timeout it is cancelled, as by a worker."""
        timeout = task.defaults.timeout
        limit = asyncio.timeout(timeout) if timeout is not None else contextlib.nullcontext()
        try:
            async with limit:
                value = await execution.call_async(task, record, context, self.app.middleware)
        except Exception as exc:
            if isinstance(limit, asyncio.Timeout) and limit.expired():
                context.cancel_event.set()
                return execution.timed_out(record, task, self.clock.now())
            return execution.outcome_of_error(exc, record, task, self.clock.now())
        return execution.outcome_of_value(value, task)

    def _report(
        self, record: JobRecord, outcome: Outcome, context: JobContext | None, started_at: float
    ) -> Job:
        """Record the outcome, then fire its event as a worker does (with the handler's
        context when a handler ran)."""
        driver = self.app.driver
        finished_at = time.time()
        state = execution.expected_state(outcome, record, cancel_requested=False)
        execution.log_outcome(record, outcome, state, 0.0)
        report = execution.report_for(outcome, record)
        if isinstance(report, Completion):
            driver.complete([report])
        elif isinstance(report, SnoozeRequest):
            driver.snooze([report])
        else:
            driver.fail([report])
        kind = events.outcome_kind(state, isinstance(outcome, execution.Snoozed))
        if self.app.events.wants(kind):
            self.app.events.emit(
                execution.attempt_event(
                    kind, record, context, started_at, finished_at, outcome=outcome
                )
            )
        return self.app.get_job(record.id)

    # -- looking -----------------------------------------------------------------------

    def jobs(
        self, task: Task[Any] | str | None = None, *, state: str | JobState | None = None
    ) -> list[Job]:
        """Every stored job (of ``task``, in ``state``), oldest first."""
        return self.app.list_jobs(state=state, task=task, limit=LIST_LIMIT)

    def enqueued(self, task: Task[Any] | str, *args: Any, **kwargs: Any) -> list[Job]:
        """The jobs of ``task`` enqueued with exactly these arguments."""
        return [job for job in self.jobs(task) if _same_call(job, args, kwargs)]

    def assert_enqueued(self, task: Task[Any] | str, *args: Any, **kwargs: Any) -> Job:
        """Fail unless a job of ``task`` was enqueued with exactly these arguments."""
        found = self.enqueued(task, *args, **kwargs)
        if not found:
            name = task.name if isinstance(task, Task) else task
            seen = [(job.args, dict(job.kwargs)) for job in self.jobs(task)]
            raise AssertionError(
                f"no job of {name} was enqueued with args={args!r} kwargs={kwargs!r}; "
                f"its jobs have: {seen or 'none enqueued'}"
            )
        return found[0]

    def assert_not_enqueued(self, task: Task[Any] | str, *args: Any, **kwargs: Any) -> None:
        """Fail if a job of ``task`` was enqueued (with these arguments, when given)."""
        found = self.enqueued(task, *args, **kwargs) if args or kwargs else self.jobs(task)
        if found:
            raise AssertionError(f"expected no such job, found: {[job.id for job in found]}")


def _same_call(job: Job, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    return list(job.args) == list(args) and dict(job.kwargs) == dict(kwargs)
