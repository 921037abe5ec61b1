"""``th.Worker``: leases jobs, runs their handlers, reports outcomes, keeps the store healthy.

One asyncio event loop drives everything; the driver is called on a small
I/O thread pool so the loop never blocks on storage:

* the **fetch loop** leases batches sized to the free concurrency slots,
  shared between the worker's queues in turn (:mod:`taskharbor.fairness`), and
  waits (``driver.wait_for_jobs``) when nothing is ready; on a store with
  notifications, the I/O thread that waits also leases when the store's hint
  ends the wait early (:class:`_Waiter`), so a job sent to an idle worker costs
  one hand-off to the event loop, not three;
* each leased job runs in its own asyncio task: ``async def`` handlers on the
  loop, sync handlers on a thread pool of ``concurrency`` threads;
* the **heartbeat loop** extends every live lease in one call and delivers
  cancellation requests to the handlers;
* the **report flusher** writes outcomes in batches (``complete``/``fail``/
  ``snooze``); whatever piles up during one write goes in the next;
* the **maintenance loop** promotes due jobs (sleeping until the next one is
  due), rescues expired leases and prunes old finished jobs.  Every worker runs
  it: the driver makes that safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from taskharbor.spec import (
    Completion,
    Failure,
    InvalidRequest,
    JobId,
    JobNotFound,
    JobRecord,
    LeaseLost,
    LeaseRef,
    SnoozeRequest,
    is_refusal,
)
from taskharbor.spec.records import check_lease_seconds, check_name, check_seconds

from . import events, execution
from .app import App
from .context import JobContext
from .events import Event
from .execution import Outcome
from .fairness import Rotation, queue_weights
from .periodic import Ticker
from .registry import Registration
from .task import Task
from .threads import DaemonThreadPool

logger = logging.getLogger("taskharbor")
T = TypeVar("T")
Report = Completion | Failure | SnoozeRequest
Queued = tuple[float, Report, Event | None]
"""A report waiting to be written: when it was queued, the report, the event it fires once
written (``None`` when nobody listens)."""

IO_THREADS = 4
"""Threads for driver calls: lease, heartbeat, reports, maintenance and the idle wait
may all be in flight at once."""


@dataclass(eq=False)
class _Active:
    """A leased job this worker is running."""

    record: JobRecord
    task: Task[Any] | None
    context: JobContext
    started: float
    """``time.monotonic()`` when the attempt started."""
    token: str
    started_at: float
    """``time.time()`` when the attempt started (for events)."""
    run: asyncio.Task[None] | None = None
    """The task running this job (:meth:`Worker._run`)."""
    handler: asyncio.Task[Any] | None = None
    """The job's own task while its ``async def`` handler runs: what :meth:`stop` cancels."""
    cancel_requested: bool = False
    reported: bool = False
    """Its outcome is queued: no more heartbeats, nothing to release."""
    released: bool = False
    """Given back (shutdown) or lost (lease fenced off): its outcome is not reported."""

    def stop(self) -> None:
        """Ask the handler to stop: set its flag, cancel it if it is a coroutine."""
        self.context.cancel_event.set()
        if self.handler is not None:
            self.handler.cancel()


class _Waiter:
    """One idle wait on an I/O thread: the store's ``wait_for_jobs``, then, when its hint
    ended the wait before its timeout, a lease of up to ``limit`` jobs on the same thread.

    The worker holds ``limit`` of its free slots for it until its records are taken
    (so a lease of the event loop meanwhile never over-fills the worker).  A worker
    that stops while it waits gives it up (:meth:`give_up`): it then does not lease;
    one already leasing is awaited and what it leased released.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.future: asyncio.Future[list[JobRecord] | None] | None = None
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._given_up = False
        self._leasing = False

    def may_lease(self) -> bool:
        """Called on the waiting thread before it leases: False once given up."""
        with self._lock:
            self._leasing = not self._given_up
            return self._leasing

    def give_up(self) -> bool:
        """No lease from now on; True when one is already under way."""
        with self._lock:
            self._given_up = True
            return self._leasing


def describe(error: BaseException) -> str:
    """``Type: message (caused by Type: message)`` on one line, every ``raise ... from``
    cause included."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        current = current.__cause__  # not __context__: what was being handled, not a cause
    return parts[0] + "".join(f" (caused by {part})" for part in parts[1:])


def _seconds(value: object, what: str) -> float:
    """A duration option: finite, >= 0 and within the contract's longest duration, so
    that no later ``now ± duration`` can overflow."""
    return check_seconds(value, what)


class Worker:
    """Runs the jobs of ``queues`` with up to ``concurrency`` handlers at once.

    ``queues`` is a name, a list of names, or a mapping of names to weights
    (``{"mail": 3, "reports": 1}``): when several queues have jobs ready, the
    free slots go to them in turn, in proportion to their weights (1 each for a
    list), so a backlog in one queue never starves the others; a slot a queue
    cannot fill goes to the others (:mod:`taskharbor.fairness`).  Priority
    orders the jobs within each queue.

    ``lease`` (seconds) is how long a job stays leased without a heartbeat; the
    worker heartbeats every ``heartbeat_interval`` (default a third of it), so
    a long job is not rescued while its worker lives.  ``shutdown_timeout`` is
    how long a graceful stop waits for running jobs; the ones still running
    then are released (they run again later, their attempt given back).
    ``retention`` (seconds, ``None`` to keep everything) is how long succeeded
    and cancelled jobs are kept before the maintenance loop prunes them; dead
    jobs (the dead-letter queue) are never pruned by a worker, and a failed
    workflow stays with them.  ``periodic=False``
    leaves the app's periodic schedules to other workers (by default every
    worker enqueues due ticks in its maintenance pass; the store makes one job
    per tick however many do).
    """

    def __init__(
        self,
        app: App,
        queues: Sequence[str] | str | Mapping[str, int] = ("default",),
        concurrency: int = 8,
        lease: float = 30.0,
        *,
        heartbeat_interval: float | None = None,
        poll_interval: float = 1.0,
        maintenance_interval: float = 1.0,
        retention: float | None = 7 * 24 * 3600.0,
        prune_interval: float = 300.0,
        shutdown_timeout: float = 30.0,
        worker_id: str | None = None,
        periodic: bool = True,
    ) -> None:
        if not isinstance(app, App):
            raise InvalidRequest(f"Worker needs a th.App, not {app!r}")
        weights = queue_weights([queues] if isinstance(queues, str) else queues)
        if not weights:
            raise InvalidRequest("Worker needs at least one queue")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidRequest(f"concurrency must be an int >= 1, not {concurrency!r}")
        self.app = app
        self.queues = tuple(weights)
        self.queue_weights = weights
        """Each queue's share of the free slots when several have jobs ready."""
        self._rotation = Rotation(weights)
        self.concurrency = concurrency
        self.lease = check_lease_seconds(lease)
        self.heartbeat_interval = (
            self.lease / 3
            if heartbeat_interval is None
            else max(0.001, _seconds(heartbeat_interval, "heartbeat_interval"))
        )
        self.poll_interval = max(0.001, _seconds(poll_interval, "poll_interval"))
        self.maintenance_interval = _seconds(maintenance_interval, "maintenance_interval")
        self.retention = None if retention is None else _seconds(retention, "retention")
        self.prune_interval = _seconds(prune_interval, "prune_interval")
        self.shutdown_timeout = _seconds(shutdown_timeout, "shutdown_timeout")
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        check_name(self.worker_id, "worker id")
        self._ticker = Ticker(app) if periodic else None
        self._thread_lock = threading.Lock()
        self._rotation_lock = threading.Lock()
        """The rotation is read by leases on I/O threads: the loop's and an idle waiter's."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_asked: bool | None = None  # None: no stop; True: graceful; False: at once
        self._reset()

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id} queues={list(self.queues)} running={len(self._active)}>"

    def _reset(self) -> None:
        self._active: dict[str, _Active] = {}  # by lease token: a job may be here twice
        self._by_job: dict[int, _Active] = {}  # each job's latest lease, found without a scan
        self._runs: set[asyncio.Task[None]] = set()
        self._outbox: list[Queued] = []
        self._flushing = False
        self._last_prune = float("-inf")
        self._waiter: asyncio.Future[None] | None = None
        self._waiter_started = 0.0
        """When the running ``_waiter`` began (event loop time)."""
        self._leasing_waiter: _Waiter | None = None
        """The idle wait that leases when woken (stores with notifications)."""
        self._clock_read: asyncio.Future[datetime] | None = None
        self._keeps_progress = False
        """Whether heartbeats carry progress (the store has ``job_metadata``): set at start."""

    # -- running -------------------------------------------------------------------

    def run(self, *, burst: bool = False, handle_signals: bool = True) -> None:
        """Work until SIGINT/SIGTERM (or :meth:`stop`), then drain gracefully.

        With ``burst=True``, return as soon as no job is ready.  A second
        signal skips the drain: running jobs are released at once.  Signals
        are only handled when called from the main thread.
        """
        asyncio.run(self.run_async(burst=burst, handle_signals=handle_signals))

    async def run_async(self, *, burst: bool = False, handle_signals: bool = False) -> None:
        """:meth:`run` inside an event loop that is already running."""
        loop = asyncio.get_running_loop()
        # A store given by URL is opened (and migrated) on first use: here, off the loop.
        await asyncio.to_thread(getattr, self.app, "driver")
        with self._thread_lock:
            if self._loop is not None:
                raise RuntimeError(f"worker {self.worker_id} is already running")
            self._loop = loop
        self._reset()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._graceful = True
        self._maintaining = asyncio.Lock()
        self._handlers = DaemonThreadPool(self.concurrency, "taskharbor-job")
        self._io = DaemonThreadPool(IO_THREADS, "taskharbor-io")
        self._registration = Registration.of(
            self.app.driver,
            self.worker_id,
            self.queues,
            self.concurrency,
            self.lease,
            self.heartbeat_interval,
        )
        self._keeps_progress = self.app.driver.capabilities.job_metadata
        await self._in_registry("register", self._registration.register)
        signals = self._install_signals(loop) if handle_signals else []
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="taskharbor-heartbeat"),
            asyncio.create_task(self._flush_loop(), name="taskharbor-reports"),
            asyncio.create_task(self._maintenance_loop(), name="taskharbor-maintenance"),
        ]
        logger.info("worker %s started on queues %s", self.worker_id, ", ".join(self.queues))
        self._warn_unserved_queues()
        self._emit_worker(events.WORKER_STARTED)
        try:
            with self._thread_lock:
                asked = self._stop_asked
            if asked is not None:
                self._request_stop(asked)
            await self._fetch_loop(burst)
            await self._drain()
            await self._in_registry("deregister", self._registration.deregister)
        finally:
            # The loops also end by their own test, should a cancellation ever be lost.
            self._stopping.set()
            if self._leasing_waiter is not None and not self._leasing_waiter.give_up():
                assert self._leasing_waiter.future is not None
                self._leasing_waiter.future.cancel()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for run in self._runs:
                run.cancel()
            for sig in signals:
                loop.remove_signal_handler(sig)
            self._handlers.shutdown(wait=False, cancel_futures=True)
            self._io.shutdown(wait=False, cancel_futures=True)
            with self._thread_lock:
                self._loop = None
                self._stop_asked = None
            self._emit_worker(events.WORKER_STOPPED)
            logger.info("worker %s stopped", self.worker_id)

    def _emit_worker(self, kind: str) -> None:
        if self.app.events.wants(kind):
            self.app.events.emit(Event(kind, worker=self))

    @property
    def busy(self) -> int:
        """How many of the ``concurrency`` slots hold a job now (running, or its outcome
        waiting to be written)."""
        return len(self._active)

    @property
    def leases(self) -> int:
        """How many leases this worker holds and heartbeats now."""
        return sum(1 for a in self._active.values() if not a.reported and not a.released)

    def _warn_unserved_queues(self) -> None:
        """Warn when the app has tasks whose default queue this worker does not lease from:
        their jobs wait until some other worker serves that queue."""
        unserved: dict[str, list[str]] = {}
        for task in self.app.tasks.values():
            if task.defaults.queue not in self.queues:
                unserved.setdefault(task.defaults.queue, []).append(task.name)
        if unserved:
            logger.warning(
                "worker %s does not serve queue(s) %s used by the app's tasks: %s; their "
                "jobs wait for a worker started on those queues",
                self.worker_id,
                ", ".join(map(repr, sorted(unserved))),
                "; ".join(
                    f"{queue!r}: {', '.join(sorted(names))}"
                    for queue, names in sorted(unserved.items())
                ),
            )

    def stop(self, *, graceful: bool = True) -> None:
        """Ask the worker to stop; safe from any thread or a signal handler.

        Graceful: stop leasing, let running jobs finish within
        ``shutdown_timeout``, release the rest.  Not graceful: release at once.
        """
        with self._thread_lock:
            if self._stop_asked is None or not graceful:
                self._stop_asked = graceful
            loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._request_stop, graceful)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        if threading.current_thread() is not threading.main_thread():
            return []
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
            installed.append(sig)
        return installed

    def _on_signal(self, sig: signal.Signals) -> None:
        graceful = not self._stopping.is_set()
        logger.info(
            "worker %s got %s: %s",
            self.worker_id,
            sig.name,
            "draining running jobs" if graceful else "releasing running jobs now",
        )
        self.stop(graceful=graceful)

    def _request_stop(self, graceful: bool) -> None:
        self._graceful = self._graceful and graceful  # once "at once", always "at once"
        self._stopping.set()
        self._wake.set()

    async def _io_call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args))

    # -- leasing -------------------------------------------------------------------

    def _quiet(self) -> bool:
        """Nothing of ours is running or waiting to be reported."""
        return not self._active and not self._outbox and not self._flushing

    async def _fetch_loop(self, burst: bool) -> None:
        hinted = False
        """The last wait ended on the store's hint that jobs may be ready."""
        while not self._stopping.is_set():
            self._wake.clear()
            waited = self._take_waited()
            if waited:
                await self._start_leased(waited)
                hinted = False
                continue
            free = self.concurrency - len(self._active) - self._held_for_waiter()
            if free <= 0:
                await self._wake.wait()
                continue
            try:
                records = await self._io_call(self._lease_shared, free)
                if not records and burst and self._quiet():
                    # Nothing running here could make jobs ready any more: one last
                    # promote/rescue pass, one last lease, and the burst is over.
                    await self._maintain(prune=False)
                    records = await self._io_call(self._lease_shared, free)
                    if not records and self._quiet():
                        return
            except Exception as error:
                self._store_failed("leasing", error)
                await self._sleep(self.poll_interval)
                continue
            await self._start_leased(records)
            if records:
                hinted = False
            else:
                # Ready jobs that a lease right after the store's hint did not get are
                # held back by flow limits (or taken by another worker): the hint would
                # only repeat itself, so this wait is for a freed slot or the next poll.
                hinted = await self._idle_wait(burst, store_hint=not hinted)

    async def _start_leased(self, records: list[JobRecord]) -> None:
        now = await self._lease_time(records)  # never raises: the jobs are leased now
        for record in records:
            self._start(record, now)

    def _lease_shared(self, free: int) -> list[JobRecord]:
        """Lease up to ``free`` jobs, the slots shared between the queues in turn (on an
        I/O thread: one hand-off from the event loop, however many queues).

        Each queue of the rotation's split is asked for its share; slots a
        queue left empty go to one lease over all the queues (in the store's
        order), unless every queue was asked and none had more.  A store
        failure after some leases keeps the jobs already leased (the failure
        is logged; the next pass tries again).
        """
        lease = self.app.driver.lease
        if len(self.queues) == 1:
            return lease(self.queues, free, self.lease, self.worker_id)
        with self._rotation_lock:
            shares = self._rotation.split(free)
        records: list[JobRecord] = []
        try:
            may_have_more = len(shares) < len(self.queues)  # a queue was not asked
            for queue, share in shares.items():
                got = lease((queue,), share, self.lease, self.worker_id)
                may_have_more = may_have_more or len(got) == share
                records += got
            left = free - len(records)
            if left and may_have_more:
                records += lease(self.queues, left, self.lease, self.worker_id)
        except Exception as error:
            if not records:
                raise
            self._store_failed("leasing", error)
        return records

    # -- the idle wait that leases -----------------------------------------------------

    def _held_for_waiter(self) -> int:
        """The free slots an idle wait in flight may fill with what it leases."""
        waiter = self._leasing_waiter
        return 0 if waiter is None else waiter.limit

    def _take_waited(self) -> list[JobRecord]:
        """The jobs a finished idle wait leased (its slots are free again for the rest)."""
        waiter = self._leasing_waiter
        if waiter is None or waiter.future is None or not waiter.future.done():
            return []
        self._leasing_waiter = None
        future = waiter.future
        if future.cancelled() or future.exception() is not None:
            return []  # logged by its done callback
        return future.result() or []

    def _wait_then_lease(self, waiter: _Waiter) -> list[JobRecord] | None:
        """On an I/O thread: the store's wait; a lease when its hint ended it early,
        ``None`` when it ran out (the loop's next pass leases, as after any poll)."""
        self.app.driver.wait_for_jobs(self.queues, self.poll_interval)
        if time.monotonic() - waiter.started >= self.poll_interval or not waiter.may_lease():
            return None
        return self._lease_shared(waiter.limit)

    def _start_leasing_waiter(self) -> _Waiter:
        """Start an idle wait holding every free slot, unless one is in flight."""
        waiter = self._leasing_waiter
        if waiter is None:
            waiter = self._leasing_waiter = _Waiter(self.concurrency - len(self._active))
            loop = asyncio.get_running_loop()
            waiter.future = loop.run_in_executor(self._io, self._wait_then_lease, waiter)
            waiter.future.add_done_callback(self._leasing_waiter_done)
        return waiter

    def _leasing_waiter_done(self, future: asyncio.Future[list[JobRecord] | None]) -> None:
        if not future.cancelled() and (error := future.exception()) is not None:
            self._store_failed("waiting for jobs", error)
        self._wake.set()  # its records, or its slots, are the loop's again

    async def _give_up_waiter(self) -> list[JobRecord]:
        """At a stop: an idle wait in flight leases nothing more; the jobs one already
        leasing got (awaited up to a third of the lease) are returned to be released."""
        waiter = self._leasing_waiter
        if waiter is None or waiter.future is None:
            return []
        if waiter.give_up():
            if not waiter.future.done():
                await asyncio.wait({waiter.future}, timeout=self.lease / 3)
            return self._take_waited()
        # Still waiting: it will lease nothing, and its end need not reach this loop.
        waiter.future.cancel()
        self._leasing_waiter = None
        return []

    async def _idle_wait(self, burst: bool, *, store_hint: bool = True) -> bool:
        """Wait for a wake-up (stop, a slot freed, jobs promoted), the poll interval, or
        (``store_hint``) a hint from the store; return whether the store's hint ended it
        (its wait returned before its timeout: jobs may be ready).  On a store with
        notifications, the wait that ends on the hint has leased already."""
        loop = asyncio.get_running_loop()
        wake = asyncio.ensure_future(self._wake.wait())
        waits: set[asyncio.Future[Any]] = {wake}
        leasing: _Waiter | None = None
        if burst or not store_hint:
            waits.add(asyncio.ensure_future(asyncio.sleep(self.poll_interval)))
        elif self.app.driver.capabilities.notifications:
            leasing = self._start_leasing_waiter()
            assert leasing.future is not None
            waits.add(leasing.future)
        else:
            if self._waiter is None or self._waiter.done():
                self._waiter = asyncio.ensure_future(
                    self._io_call(self.app.driver.wait_for_jobs, self.queues, self.poll_interval)
                )
                self._waiter.add_done_callback(self._waiter_done)
                self._waiter_started = loop.time()
            waits.add(self._waiter)
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            if waiting is not self._waiter and (leasing is None or waiting is not leasing.future):
                waiting.cancel()
        if leasing is not None:
            # Whether the hint ended it and its lease found nothing (held back, or taken),
            # or it failed (logged): either way the next wait is for a wake-up or a poll.
            # Its end sets the wake-up too, so that is not looked at.
            future = leasing.future
            assert future is not None
            if not future.done() or future.cancelled():
                return False
            return future.exception() is not None or future.result() == []
        early = loop.time() - self._waiter_started < self.poll_interval
        return self._waiter in done and wake not in done and early

    def _waiter_done(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and (error := future.exception()) is not None:
            self._store_failed("waiting for jobs", error)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up early when the worker is asked to stop.

        Not ``wait_for``, which may drop a cancellation (see :meth:`_store_time`)."""
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({stopping}, timeout=seconds)
        finally:
            stopping.cancel()

    # -- running one job -------------------------------------------------------------

    def _timeout(self, record: JobRecord) -> float | None:
        task = self.app.get_task(record.task)
        return task.defaults.timeout if task is not None else None

    async def _lease_time(self, records: Sequence[JobRecord]) -> datetime | None:
        """The store's time at the lease, only if a job's timeout needs it: the lease's
        own expiry less its length (the store's now when it leased), else read once per
        batch (a store's clock may be a round trip, never to be paid per job, nor between
        a lease and the start of what it leased when the store said it already)."""
        if not any(self._timeout(record) is not None for record in records):
            return None
        expiries = [record.lease_expires_at for record in records]
        if all(expiry is not None for expiry in expiries):
            return min(e for e in expiries if e is not None) - timedelta(seconds=self.lease)
        return await self._now()

    def _start(self, record: JobRecord, now: datetime | None) -> None:
        task = self.app.get_task(record.task)
        timeout = task.defaults.timeout if task is not None else None
        if record.lease_token is None:
            raise InvalidRequest(f"driver leased job {record.id} without a lease token")
        active = _Active(
            record=record,
            task=task,
            context=execution.context_for(record, timeout, now),
            started=time.monotonic(),
            token=record.lease_token,
            started_at=time.time(),
        )
        older = self._by_job.get(record.id)
        if older is not None and not older.reported and not older.released:
            # Leased again, so the older lease expired and was rescued: stop its handler.
            self._lose(older, "the job was leased again after its lease expired")
        self._active[active.token] = active
        self._by_job[record.id] = active
        active.run = asyncio.create_task(self._run(active), name=f"taskharbor-job-{record.id}")
        self._runs.add(active.run)  # the run discards itself as it ends
        if self.app.events.wants(events.STARTED):
            self.app.events.emit(self._event(events.STARTED, active))

    def _event(self, kind: str, active: _Active, outcome: Outcome | None = None) -> Event:
        """The event of ``kind`` about an attempt (ended with ``outcome``, when it has one)."""
        return execution.attempt_event(
            kind,
            active.record,
            active.context if active.task is not None else None,
            active.started_at,
            None if kind == events.STARTED else time.time(),
            outcome=outcome,
            worker=self,
        )

    async def _run(self, active: _Active) -> None:
        try:
            outcome = await self._outcome(active)
            if not active.released:
                self._queue_report(active, outcome)
        except Exception:
            logger.exception("worker %s: running job %d failed", self.worker_id, active.record.id)
        finally:
            if active.run is not None:
                self._runs.discard(active.run)
            del self._active[active.token]
            if self._by_job.get(active.record.id) is active:
                del self._by_job[active.record.id]
            self._wake.set()

    async def _outcome(self, active: _Active) -> Outcome:
        """Run the handler and say what happened."""
        record, task = active.record, active.task
        if task is None:
            return execution.unknown_task(record)
        if task.is_async:
            return await self._outcome_async(active, task)
        return await self._outcome_sync(active, task)

    async def _outcome_async(self, active: _Active, task: Task[Any]) -> Outcome:
        """Await an ``async def`` handler inside this job's own task.

        No second task per job: :meth:`_Active.stop` cancels this task while
        the handler runs (``active.handler`` is set only then), and the
        task's timeout is an ``asyncio.timeout`` around the await.
        """
        record, context = active.record, active.context
        this = active.run
        assert this is not None, "an async handler runs in its job's own task"
        timeout = task.defaults.timeout
        limit = asyncio.timeout(timeout) if timeout is not None else contextlib.nullcontext()
        active.handler = this
        try:
            async with limit:
                value = await execution.call_async(task, record, context, self.app.middleware)
        except asyncio.CancelledError:
            if this.cancelling():
                if not context.cancelled:
                    raise  # the worker itself is being torn down, not a stop of this job
                this.uncancel()
            return execution.cancelled(record)
        except Exception as error:
            active.handler = None
            if isinstance(limit, asyncio.Timeout) and limit.expired():
                context.cancel_event.set()
                return execution.timed_out(record, task, await self._now())
            if active.cancel_requested:
                return execution.cancelled(record)
            return execution.outcome_of_error(error, record, task, await self._now())
        finally:
            active.handler = None
        if context.cancelled and this.cancelling():
            this.uncancel()  # the handler swallowed the cancellation stop() sent it
        if active.cancel_requested:
            return execution.cancelled(record)
        return execution.outcome_of_value(value, task)

    async def _outcome_sync(self, active: _Active, task: Task[Any]) -> Outcome:
        """Run a sync handler on the handler thread pool.

        A thread cannot be cancelled: past its timeout the handler gets its
        cancellation flag, and the timeout is reported only once its thread has
        returned.  Until then the job keeps its lease (the heartbeat loop extends
        it) and its slot, so its next attempt can never run beside this one.
        """
        record = active.record
        handler = asyncio.get_running_loop().run_in_executor(
            self._handlers,
            execution.call_sync,
            task,
            record,
            active.context,
            self.app.middleware,
        )
        timeout = task.defaults.timeout
        if timeout is not None:
            done, _ = await asyncio.wait({handler}, timeout=timeout)
            if not done:
                active.stop()
                logger.warning(
                    "job %d %s ran past its timeout (%g s): its cancellation flag is set, and "
                    "it keeps its lease until its thread returns",
                    record.id,
                    record.task,
                    timeout,
                )
                await asyncio.wait({handler})
                if not handler.cancelled():
                    handler.exception()  # what it ended with no longer matters: it timed out
                return execution.timed_out(record, task, await self._now())
        try:
            value = await handler
        except Exception as error:
            if active.cancel_requested:
                return execution.cancelled(record)
            return execution.outcome_of_error(error, record, task, await self._now())
        if active.cancel_requested:
            return execution.cancelled(record)
        return execution.outcome_of_value(value, task)

    async def _store_time(self) -> datetime:
        """The store's time, read on an I/O thread (a round trip on some stores: read only
        when needed), waited for at most a third of the lease; raises what the store raised
        or ``TimeoutError``.

        Callers share a read in flight, so a store whose clock stalls holds one I/O
        thread, not one more per caller until none is left for leases and reports.
        """
        read = self._clock_read
        if read is None or read.done():
            read = self._clock_read = asyncio.ensure_future(
                self._io_call(self.app.driver.clock.now)
            )
            # Whoever gave up waiting no longer looks at it: retrieve its error here.
            read.add_done_callback(lambda done: done.cancelled() or done.exception())
        wait = self.lease / 3
        # asyncio.wait, never wait_for: cancelled in the loop pass where the read ends,
        # wait_for (Python 3.11) returns the read and drops the cancellation, and a
        # maintenance loop cancelled that way at the end of a burst runs on for ever.
        await asyncio.wait({read}, timeout=wait)
        if not read.done():
            raise TimeoutError(f"the store's clock did not answer within {wait:g} s")
        return read.result()

    async def _now(self) -> datetime:
        """The store's time for a leased job's deadline, a retry time or a release.

        Those jobs are leased already, so a store that cannot tell its time (an
        error, a stall) must not stop them being started or reported: this
        machine's clock is used instead, and the failure logged.
        """
        try:
            return await self._store_time()
        except Exception as error:
            self._store_failed("reading the store's clock", error, "using this machine's clock")
            return datetime.now(UTC)

    def _store_failed(self, what: str, error: BaseException, then: str = "retrying") -> None:
        """Log a failed store call as one line naming its cause (a lost connection, a full
        disk); the traceback goes to DEBUG, so an outage does not flood the log."""
        logger.warning("worker %s: %s failed: %s; %s", self.worker_id, what, describe(error), then)
        logger.debug("worker %s: %s failed", self.worker_id, what, exc_info=error)

    def _queue_report(self, active: _Active, outcome: Outcome) -> None:
        record = active.record
        event = None
        logging_on = logger.isEnabledFor(logging.INFO)
        heard = not self.app.events.heard.isdisjoint(events.OUTCOMES_OR_LOST)
        # The expected state is only worth computing for the log or a subscriber.
        if logging_on or heard:
            state = execution.expected_state(outcome, record, active.cancel_requested)
            if logging_on:
                seconds = time.monotonic() - active.started
                execution.log_outcome(record, outcome, state, seconds, self.worker_id)
            if heard:
                kind = events.outcome_kind(state, isinstance(outcome, execution.Snoozed))
                event = self._event(kind, active, outcome)
        report = execution.report_for(outcome, record)
        active.reported = True
        self._outbox.append((time.monotonic(), report, event))
        self._outbox_ready.set()

    # -- reporting -------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            await self._flush()

    async def _flush(self) -> None:
        """Write every queued report, in as few driver calls as possible.

        A write that fails (a full disk, a lost connection) is tried again,
        backing off up to the heartbeat interval.  Each report is kept while
        its lease may still be live: a reported job gets no more heartbeats, so
        ``lease`` seconds after its report was queued the store would refuse
        it anyway (the job was rescued and runs again: at-least-once).
        """
        failures = 0
        while self._outbox and not self._flushing:
            batch, self._outbox = self._outbox, []
            self._flushing = True
            try:
                lost = await self._io_call(self._write, [report for _, report, _ in batch])
                failures = 0
                self._emit_written(batch, lost)
            except Exception as error:
                if is_refusal(error):
                    # A refusal (a bad request, an unknown job): sending it again cannot help.
                    self._store_failed("writing reports", error, f"{len(batch)} reports dropped")
                    self._emit_dropped(batch)
                    continue
                failures += 1
                horizon = time.monotonic() - self.lease
                kept = [item for item in batch if item[0] >= horizon]
                self._store_failed("writing reports", error)
                if len(kept) < len(batch):
                    logger.warning(
                        "worker %s: %d reports dropped: their leases have expired",
                        self.worker_id,
                        len(batch) - len(kept),
                    )
                    self._emit_dropped([item for item in batch if item[0] < horizon])
                self._outbox[:0] = kept
                if kept:
                    await asyncio.sleep(min(self.heartbeat_interval, 0.1 * 2 ** min(failures, 10)))
            finally:
                self._flushing = False
                self._wake.set()

    def _emit_written(self, batch: list[Queued], lost: set[str]) -> None:
        """Fire the events of written reports: its outcome for each the store took, ``lost``
        for each it refused (a stale lease)."""
        for _, report, event in batch:
            if event is not None:
                if report.token in lost:
                    event = dataclasses.replace(event, kind=events.LOST)
                self.app.events.emit(event)  # a kind nobody listens to calls nobody

    def _emit_dropped(self, batch: list[Queued]) -> None:
        """Fire ``lost`` for reports that will never be written."""
        if self.app.events.wants(events.LOST):
            for _, _, event in batch:
                if event is not None:
                    self.app.events.emit(dataclasses.replace(event, kind=events.LOST))

    def _write(self, reports: list[Report]) -> set[str]:
        """One driver call per kind of report (runs on an I/O thread); returns the lease
        tokens of the reports the store refused."""
        driver = self.app.driver
        lost: list[LeaseLost] = []
        completions = [r for r in reports if isinstance(r, Completion)]
        failures = [r for r in reports if isinstance(r, Failure)]
        snoozes = [r for r in reports if isinstance(r, SnoozeRequest)]
        if completions:
            lost += driver.complete(completions)
        if failures:
            lost += driver.fail(failures)
        if snoozes:
            lost += driver.snooze(snoozes)
        for refused in lost:
            logger.warning("worker %s: report refused: %s", self.worker_id, refused)
        return {refused.token for refused in lost}

    # -- heartbeats ------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            live = self._live()
            if not live or self._registration.unsure:  # a lease heartbeat sees the worker too
                await self._in_registry("heartbeat", self._registration.confirm)
            if not live:
                continue
            refs = self._lease_refs(live)
            try:
                result = await self._io_call(self.app.driver.heartbeat, refs, self.lease)
            except Exception as error:
                self._registration.unsure = True
                self._store_failed("heartbeat", error)
                continue
            for carried, ref in zip(live, refs, strict=True):
                if ref.progress is not None:
                    carried.context.progress_stored(ref.progress)
            for lost in result.lost:
                active = self._active.get(lost.token)
                if active is not None and not active.reported:
                    self._lose(active, str(lost))
            for active in self._live():
                if active.record.id in result.cancel_requested and not active.cancel_requested:
                    logger.info("job %d %s: cancel requested", active.record.id, active.record.task)
                    active.cancel_requested = True
                    active.stop()

    def _lease_refs(self, live: list[_Active]) -> list[LeaseRef]:
        """The leases to extend, each with the progress its handler set since the store
        last had it (none on a store without ``job_metadata``)."""
        if not self._keeps_progress:
            return [LeaseRef(a.record.id, a.token) for a in live]
        return [LeaseRef(a.record.id, a.token, a.context.unsent_progress()) for a in live]

    async def _in_registry(self, what: str, call: Callable[[], None]) -> None:
        """A call on this worker's registration (``engine.registry``), if the store keeps
        a workers registry; a failure is logged and the next heartbeat tries again."""
        if not self._registration.enabled:
            return
        try:
            await self._io_call(call)
        except Exception as error:
            self._registration.unsure = True
            self._store_failed(
                f"workers registry {what}", error, "trying again at the next heartbeat"
            )

    def _live(self) -> list[_Active]:
        """The jobs whose lease this worker still holds and has not reported on."""
        return [a for a in self._active.values() if not a.reported and not a.released]

    def _lose(self, active: _Active, why: str) -> None:
        logger.warning(
            "job %d %s: lease lost (%s); its outcome will not be reported",
            active.record.id,
            active.record.task,
            why,
        )
        active.released = True
        active.stop()
        if self.app.events.wants(events.LOST):
            self.app.events.emit(self._event(events.LOST, active))

    # -- maintenance -----------------------------------------------------------------

    async def _maintenance_loop(self) -> None:
        while not self._stopping.is_set():
            delay = self.maintenance_interval
            try:
                next_due = await self._maintain(prune=True)
                if next_due is not None:
                    due_in = (next_due - await self._store_time()).total_seconds()
                    delay = min(delay, max(0.0, due_in))
            except Exception as error:
                self._store_failed("maintenance", error)
            await self._sleep(max(0.001, delay))

    async def _maintain(self, *, prune: bool) -> datetime | None:
        """Promote due jobs, rescue expired leases, prune when due.

        Enqueues the due ticks of the app's periodic schedules first (unless
        this worker was started with ``periodic=False``).  Returns when the next
        scheduled or retrying job, or the next tick, is due (``None``: none is).
        One pass at a time: a store may skip rows another promote is holding,
        so burst mode's last pass must not overlap the background one.
        """
        async with self._maintaining:
            return await self._maintain_once(prune=prune)

    async def _maintain_once(self, *, prune: bool) -> datetime | None:
        driver = self.app.driver
        # Ticks first: a tick's job delayed by jitter is then seen by this pass's promote.
        ticked = None if self._ticker is None else await self._io_call(self._ticker.run)
        if ticked is not None and ticked.jobs:
            self._wake.set()
        promoted = await self._io_call(driver.promote)
        rescued = await self._io_call(driver.rescue)
        if rescued:
            logger.info("worker %s rescued expired leases of jobs %s", self.worker_id, rescued)
            if self.app.events.wants(events.RESCUED):
                await self._emit_rescued(rescued)
        if promoted.promoted or rescued:
            self._wake.set()
        if prune and self.retention is not None:
            now = time.monotonic()
            if now - self._last_prune >= self.prune_interval:
                self._last_prune = now
                horizon = await self._store_time() - timedelta(seconds=self.retention)
                pruned = await self._io_call(driver.prune, horizon)
                if pruned:
                    logger.info("worker %s pruned %d finished jobs", self.worker_id, pruned)
        due = [promoted.next_due, None if ticked is None else ticked.next_tick]
        return min((moment for moment in due if moment is not None), default=None)

    async def _emit_rescued(self, job_ids: list[JobId]) -> None:
        """Fire ``rescued`` for each job, read as the rescue left it (a job pruned or
        deleted meanwhile is left out)."""
        try:
            records = await self._io_call(self.app.driver.get, job_ids)
        except JobNotFound:
            records = []
            for job_id in job_ids:
                with contextlib.suppress(JobNotFound):
                    records += await self._io_call(self.app.driver.get, [job_id])
        for record in records:
            self.app.events.emit(Event(events.RESCUED, job=record, worker=self))

    # -- stopping --------------------------------------------------------------------

    async def _drain(self) -> None:
        """Let running jobs finish within the deadline, release the rest, flush reports."""
        unstarted = await self._give_up_waiter()
        if unstarted:
            now = await self._now()
            logger.info(
                "worker %s releases jobs leased as it stopped %s",
                self.worker_id,
                [record.id for record in unstarted],
            )
            for record in unstarted:
                if record.lease_token is not None:
                    release = SnoozeRequest(record.id, record.lease_token, now)
                    self._outbox.append((time.monotonic(), release, None))
        if self._graceful and self._runs:
            deadline = time.monotonic() + self.shutdown_timeout
            while self._runs and not self._all_reported():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._graceful:
                    break
                await asyncio.wait(set(self._runs), timeout=min(remaining, 0.1))
        unfinished = self._live()
        if unfinished:
            now = await self._now()
            logger.info(
                "worker %s releases unfinished jobs %s",
                self.worker_id,
                [a.record.id for a in unfinished],
            )
            released = self.app.events.wants(events.RELEASED)
            for active in unfinished:
                active.released = True
                active.stop()
                release = SnoozeRequest(active.record.id, active.token, now)
                event = self._event(events.RELEASED, active) if released else None
                self._outbox.append((time.monotonic(), release, event))
        while self._flushing:
            await asyncio.sleep(0.01)
        await self._flush()

    def _all_reported(self) -> bool:
        return all(a.reported or a.released for a in self._active.values())
