"""``th.App``: the task registry, the producer API and the operator API over one driver."""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, Protocol, overload

from taskharbor.spec import (
    JSON,
    Driver,
    EnqueueRequest,
    InvalidRequest,
    JobFilter,
    JobId,
    JobRecord,
    JobState,
    RateLimit,
    WorkerRecord,
    WorkflowGraph,
    WorkflowRecord,
)
from taskharbor.spec.records import PRUNED_BY_DEFAULT
from taskharbor.spec.schedules import MissedPolicy, Schedule

from . import transactional
from .backoff import Backoff, as_backoff
from .canvas import Signature, Workflow, WorkflowHandle, build_graph
from .codec import Codec, DefaultCodec, PayloadError
from .events import ENQUEUED, WORKFLOW_ENQUEUED, Event, Events, F
from .flow import KeySource, TaskFlow, check_store_enforces
from .jobs import Job
from .middleware import Middleware, chain_enqueue, chain_enqueue_workflow
from .options import (
    TaskDefaults,
    check_exception_types,
    check_store_keeps_labels,
    check_store_keeps_scopes,
    check_store_selects_tags,
    check_task_labels,
    check_timeout,
    key_scope_of,
)
from .periodic import Schedules, periodic_decorator
from .queues import QueueStatus, pause_queues, queue_statuses
from .task import Task
from .urls import DEFAULT_URL, driver_opener
from .waiting import sleep_until_finished, sleep_until_finished_async

P = ParamSpec("P")
Q = ParamSpec("Q")
JobRef = JobId | Job


def _job_id(job: JobRef) -> JobId:
    return job.id if isinstance(job, Job) else job


def _states(state: str | JobState | Iterable[str | JobState] | None) -> frozenset[JobState] | None:
    if state is None:
        return None
    names = [state] if isinstance(state, str) else list(state)
    known = {s.value: s for s in JobState}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidRequest(
            f"unknown job state(s) {', '.join(map(repr, unknown))} (one of: {', '.join(known)})"
        )
    return frozenset(known[str(name)] for name in names)


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` returns: it registers the function it decorates."""

    def __call__(self, fn: Callable[Q, Any], /) -> Task[Q]: ...


class App:
    """A TaskHarbor application: tasks, and the store their jobs live in.

    ``App()`` opens the embedded default store (SQLite file ``./taskharbor.db``);
    ``App("postgresql://...")``, ``App("sqlite:///path.db")`` or
    ``App("memory://")`` open another by URL, and ``App(driver=...)`` takes any
    :class:`~taskharbor.spec.Driver`.  A store given by URL is opened on first
    use, not here, so importing a module that defines an app and its tasks
    needs no database (a malformed URL or an unknown scheme is refused here
    all the same).  When opened, its schema is created or upgraded
    (``migrate=False`` skips that, for operators who run ``taskharbor
    migrate`` themselves).  ``codec`` encodes typed task arguments and results
    to JSON and decodes them by the handlers' annotations (default:
    :class:`~taskharbor.codec.DefaultCodec`; see :mod:`taskharbor.codec`).
    """

    def __init__(
        self,
        url: str | Driver | None = None,
        *,
        driver: Driver | None = None,
        middleware: Sequence[Middleware] = (),
        migrate: bool = True,
        codec: Codec | None = None,
    ) -> None:
        if isinstance(url, Driver):
            if driver is not None:
                raise InvalidRequest("give App a storage URL or a driver, not both")
            url, driver = None, url
        if url is not None and driver is not None:
            raise InvalidRequest("give App a storage URL or a driver, not both")
        self._driver: Driver | None = None
        self._opener: Callable[[], Driver] | None = None
        self._opening = threading.Lock()
        if driver is None:
            opener = driver_opener(DEFAULT_URL if url is None else url)  # checks the URL now
            self._opener = functools.partial(self._open, opener, migrate)
        elif not isinstance(driver, Driver):
            raise InvalidRequest(f"driver must be a taskharbor Driver, not {driver!r}")
        else:
            self._driver = driver
        if codec is not None and not isinstance(codec, Codec):
            raise InvalidRequest(
                f"codec must have encode(value) and decode(data, annotation), not {codec!r}"
            )
        self.codec: Codec = DefaultCodec() if codec is None else codec
        """Encodes typed arguments and results to JSON and decodes them back."""
        self._tasks: dict[str, Task[Any]] = {}
        self.schedules = Schedules(self)
        """The periodic schedules declared with :meth:`periodic`."""
        self._middleware: list[Middleware] = []
        for layer in middleware:
            self.use(layer)
        self.events = Events()
        """The event hooks: ``app.events.subscribe(callback, "dead")``; see
        :mod:`taskharbor.events`."""
        self._connection: ContextVar[object | None] = ContextVar(
            f"taskharbor-connection-{id(self)}", default=None
        )

    @staticmethod
    def _open(opener: Callable[[], Driver], migrate: bool) -> Driver:
        driver = opener()
        if migrate:
            try:
                driver.migrate()
            except BaseException:
                driver.close()
                raise
        return driver

    @property
    def driver(self) -> Driver:
        """The store; one given by URL is opened (and migrated) on first use."""
        driver = self._driver
        if driver is None:
            with self._opening:
                if self._driver is None:
                    assert self._opener is not None, "an app has a driver or a way to open one"
                    self._driver = self._opener()
                driver = self._driver
        return driver

    @driver.setter
    def driver(self, driver: Driver) -> None:
        self._driver = driver

    def _swap_driver(self, driver: Driver) -> tuple[Driver | None, Callable[[], Driver] | None]:
        """Put the app on ``driver`` without opening its own store (the testing kit);
        :meth:`_restore_driver` gives back what this returns."""
        with self._opening:
            saved = (self._driver, self._opener)
            self._driver = driver
        return saved

    def _restore_driver(self, saved: tuple[Driver | None, Callable[[], Driver] | None]) -> None:
        with self._opening:
            self._driver, self._opener = saved

    def __repr__(self) -> str:
        store = type(self._driver).__name__ if self._driver is not None else "(not opened yet)"
        return f"<App {store} tasks={len(self._tasks)}>"

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store's connections and files (nothing to do if it was never opened)."""
        if self._driver is not None:
            self._driver.close()

    # -- tasks ------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Any], /) -> Task[P]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int = 3,
        backoff: Backoff | Callable[[int], float] | None = None,
        timeout: float | None = None,
        retry_on: type[Exception] | Sequence[type[Exception]] = (),
        no_retry_on: type[Exception] | Sequence[type[Exception]] = (),
        concurrency: int | None = None,
        global_concurrency: int | None = None,
        concurrency_key: KeySource | None = None,
        sequence: bool | str = False,
        rate_limit: str | RateLimit | None = None,
        rate_limit_per_key: bool = False,
        tags: Sequence[str] = (),
        meta: Mapping[str, Any] | None = None,
        unique_for: float | timedelta | None = None,
        unique_until: str | None = None,
    ) -> TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int = 3,
        backoff: Backoff | Callable[[int], float] | None = None,
        timeout: float | None = None,
        retry_on: type[Exception] | Sequence[type[Exception]] = (),
        no_retry_on: type[Exception] | Sequence[type[Exception]] = (),
        concurrency: int | None = None,
        global_concurrency: int | None = None,
        concurrency_key: KeySource | None = None,
        sequence: bool | str = False,
        rate_limit: str | RateLimit | None = None,
        rate_limit_per_key: bool = False,
        tags: Sequence[str] = (),
        meta: Mapping[str, Any] | None = None,
        unique_for: float | timedelta | None = None,
        unique_until: str | None = None,
    ) -> Task[Any] | TaskDecorator:
        """Register a function (sync or ``async def``) as a task.

        Use as ``@app.task`` or ``@app.task(...)``.  ``name`` defaults to
        ``module.qualname``; two tasks under one name are refused.  ``queue``,
        ``priority`` and ``max_attempts`` are defaults for each enqueue;
        ``backoff`` (a :class:`Backoff` or ``attempt -> seconds``, default
        exponential with jitter) spaces retries; ``timeout`` (seconds) ends an
        attempt that runs longer, as a failure (a ``TimeoutError`` for
        ``retry_on``/``no_retry_on``).  ``no_retry_on`` (exception classes)
        sends a matching failure straight to the dead-letter queue, like
        ``PermanentError``; with ``retry_on`` only matching failures retry.

        Flow control (enforced by the store, across every worker): ``concurrency``
        (at most N running per key when the job has one, else per task),
        ``global_concurrency`` (per task, whatever the keys), ``concurrency_key``
        (an argument's name, or a function of the call's arguments), ``sequence``
        (``True``/``"block"`` or ``"skip"``: a key's jobs one at a time, in enqueue
        order), ``rate_limit`` (``"100/m"``; per key with ``rate_limit_per_key``).
        See :mod:`taskharbor.flow`.

        ``tags`` (a few short strings) and ``meta`` (a small JSON object) go with
        every job of the task, for people: ``list_jobs(tag=...)``, ``jobs list
        --tag``, the dashboard.  An enqueue's own ``tags``/``meta`` options add to
        them (its tags after the task's, its meta keys winning).

        How long a job holds its ``idempotency_key`` (given per enqueue with
        ``task.options(idempotency_key=...)``): until it is pruned by default;
        ``unique_until="finished"`` only while it is unfinished; ``unique_for``
        (seconds or a timedelta) for that long from its enqueue.  Either can also
        be given per enqueue; they apply to jobs enqueued with a key.
        """
        backoff_policy = as_backoff(backoff)
        task_tags, task_meta = check_task_labels(tags, meta)
        task_scope = key_scope_of(
            {"unique_for": unique_for, "unique_until": unique_until}, "@app.task"
        )
        checked_timeout = check_timeout(timeout)
        retry_types = check_exception_types(retry_on, "retry_on")
        no_retry_types = check_exception_types(no_retry_on, "no_retry_on")

        def register(function: Callable[Q, Any], /) -> Task[Q]:
            if not callable(function):
                raise InvalidRequest(f"@app.task needs a function, not {function!r}")
            task_name = default_task_name(function) if name is None else name
            flow = TaskFlow.declare(
                task_name,
                concurrency=concurrency,
                global_concurrency=global_concurrency,
                concurrency_key=concurrency_key,
                sequence=sequence,
                rate_limit=rate_limit,
                rate_limit_per_key=rate_limit_per_key,
            )
            defaults = TaskDefaults(
                queue,
                priority,
                max_attempts,
                backoff_policy,
                checked_timeout,
                retry_types,
                no_retry_types,
                flow,
                task_tags,
                task_meta,
                task_scope,
            )
            registered = Task(self, function, task_name, defaults)
            # Refuses bad defaults now, not at the first enqueue (flow: checked above).
            registered.request((), {}, {}, check=False, with_flow=False)
            if task_name in self._tasks:
                raise InvalidRequest(f"a task named {task_name!r} is already registered")
            self._tasks[task_name] = registered
            return registered

        return register if fn is None else register(fn)

    @property
    def tasks(self) -> Mapping[str, Task[Any]]:
        """The registered tasks by name."""
        return dict(self._tasks)

    def get_task(self, name: str) -> Task[Any] | None:
        """The task registered under ``name``, if any."""
        return self._tasks.get(name)

    def use(self, middleware: Middleware) -> None:
        """Add a middleware after (inside) the ones already added."""
        if not isinstance(middleware, Middleware):
            raise InvalidRequest(f"middleware must subclass th.Middleware, not {middleware!r}")
        self._middleware.append(middleware)

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The middleware, outermost first."""
        return tuple(self._middleware)

    def on(self, *kinds: str) -> Callable[[F], F]:
        """``@app.on("dead", "retrying")`` above ``def alert(event): ...`` subscribes it to
        those events (every kind if none is named); see :mod:`taskharbor.events`."""
        return self.events.on(*kinds)

    # -- periodic jobs ------------------------------------------------------------

    @overload
    def periodic(
        self,
        target: Signature | Task[Any],
        /,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        tz: str | None = None,
        name: str | None = None,
        missed: MissedPolicy = "latest",
        grace: float = 60.0,
        catch_up: int = 100,
        jitter: float = 0.0,
        skip_if_running: bool = False,
    ) -> Schedule: ...

    @overload
    def periodic(
        self,
        target: None = None,
        /,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        tz: str | None = None,
        name: str | None = None,
        missed: MissedPolicy = "latest",
        grace: float = 60.0,
        catch_up: int = 100,
        jitter: float = 0.0,
        skip_if_running: bool = False,
    ) -> Callable[[Callable[..., Any] | Task[Any]], Task[Any]]: ...

    def periodic(
        self,
        target: Signature | Task[Any] | None = None,
        /,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        tz: str | None = None,
        name: str | None = None,
        missed: MissedPolicy = "latest",
        grace: float = 60.0,
        catch_up: int = 100,
        jitter: float = 0.0,
        skip_if_running: bool = False,
    ) -> Schedule | Callable[[Callable[..., Any] | Task[Any]], Task[Any]]:
        """Run ``target`` (a signature, or a task without arguments) on a schedule.

        Exactly one of ``cron`` (5 fields, evaluated in zone ``tz``, default
        UTC) and ``every`` (a timedelta or seconds, whole, >= 1; ticks at
        multiples of it since 1970-01-01 UTC).  ``name`` defaults to the task's
        name and is unique per app.  ``missed`` decides what runs of ticks
        older than ``grace`` seconds (``"latest"``: the most recent once,
        ``"none"``, ``"all"``: up to ``catch_up``); ``jitter`` delays each
        tick's job by up to that many seconds; ``skip_if_running`` skips a tick
        while the previous job of the schedule is unfinished.  Without a
        target it is a decorator (``@app.periodic(every=60)`` above
        ``@app.task``, or on a plain function, which becomes a task).  Bad
        input is an ``InvalidRequest`` here, naming what is wrong.
        """

        def declare(chosen: Signature | Task[Any]) -> Schedule:
            return self.schedules.declare(
                chosen,
                cron=cron,
                every=every,
                tz=tz,
                name=name,
                missed=missed,
                grace=grace,
                catch_up=catch_up,
                jitter=jitter,
                skip_if_running=skip_if_running,
            )

        if target is None:
            return periodic_decorator(self, declare)
        return declare(target)

    # -- producing ----------------------------------------------------------------

    def request_for(self, signature: Signature) -> EnqueueRequest:
        """The stored request for a signature: its task's defaults, then its options.

        Its arguments must bind to the handler as they are (no parent's result
        comes in front of a signature enqueued on its own)."""
        return self._task_for(signature).request(
            tuple(signature.args), signature.kwargs, signature.opts
        )

    def _task_for(self, signature: Signature) -> Task[Any]:
        task = self._tasks.get(signature.task)
        if task is None:
            raise InvalidRequest(f"no task named {signature.task!r} is registered on this app")
        return task

    def _step_request(self, signature: Signature) -> EnqueueRequest:
        """A workflow step's request; its arguments are checked once its input is known."""
        return self._task_for(signature).request(
            tuple(signature.args), signature.kwargs, signature.opts, check=False
        )

    def _check_steps(self, graph: WorkflowGraph) -> None:
        """Each step's arguments bind to its handler, a parent's result in front if it gets one."""
        for step in graph.steps:
            task = self._tasks[step.request.task]
            leading = 0 if step.input is None else 2 if step.partial else 1
            task.check_call(step.request.args, step.request.kwargs, leading=leading)
        if (
            any(step.partial for step in graph.steps)
            and not self.driver.capabilities.partial_chords
        ):
            raise InvalidRequest(
                f"{type(self.driver).__name__} does not run partial chords "
                "(capability partial_chords): use chord(..., partial=False)"
            )
        if graph.on_failure is not None:
            if not self.driver.capabilities.failure_callbacks:
                raise InvalidRequest(
                    f"{type(self.driver).__name__} does not store failure callbacks "
                    "(capability failure_callbacks): enqueue the workflow without on_failure"
                )
            callback = graph.on_failure
            self._tasks[callback.task].check_call(callback.args, callback.kwargs, leading=1)

    @contextmanager
    def using(self, connection: object) -> Iterator[None]:
        """Enqueue on ``connection``, inside its open transaction, for the block's duration.

        Every enqueue of this app in the block (``app.enqueue``,
        ``enqueue_many``, ``task.enqueue``, whole workflows, and their async
        forms) goes through the enqueue middleware and is written on
        ``connection``: the jobs and workflows exist if and only if that
        transaction commits, and workers are woken at the commit.  For
        PostgreSQL a psycopg ``Connection`` or, from async code, an
        ``AsyncConnection``; for SQLite a ``sqlite3`` connection to the store's
        file.  The block follows the code that entered it (this thread, or
        this asyncio task); blocks nest, the innermost wins.
        """
        token = self._connection.set(transactional.bind(self.driver, connection))
        try:
            yield
        finally:
            self._connection.reset(token)

    def _on(self, connection: object) -> AbstractContextManager[None]:
        return nullcontext() if connection is None else self.using(connection)

    @overload
    def enqueue(
        self,
        target: Signature,
        *,
        idempotency_key: str | None = None,
        connection: object = None,
    ) -> Job: ...

    @overload
    def enqueue(
        self,
        target: Workflow,
        *,
        name: str | None = None,
        idempotency_key: str | None = None,
        connection: object = None,
    ) -> WorkflowHandle: ...

    def enqueue(
        self,
        target: Signature | Workflow,
        *,
        name: str | None = None,
        idempotency_key: str | None = None,
        connection: object = None,
    ) -> Job | WorkflowHandle:
        """Store a signature's job (-> :class:`Job`) or a whole workflow (-> its handle).

        ``name`` names a workflow (``taskharbor workflows show`` and ``list`` show
        it, ``workflows list --name`` selects by it); a single job has no name.
        ``idempotency_key``: while a stored job (for a signature) or workflow
        (for a workflow) holds the key, enqueueing it again stores nothing and
        returns the one stored, whatever it contains (``Job.created`` is then
        False); a workflow's key is freed when it is pruned, a job's when its
        task's ``unique_until``/``unique_for`` (or the signature's options) say,
        by default when it is pruned.  Job keys and workflow keys are apart.
        ``connection``: enqueue inside that connection's open transaction, as
        :meth:`using` does.
        """
        with self._on(connection):
            return self._enqueue(target, name, idempotency_key)

    @overload
    async def enqueue_async(
        self,
        target: Signature,
        *,
        idempotency_key: str | None = None,
        connection: object = None,
    ) -> Job: ...

    @overload
    async def enqueue_async(
        self,
        target: Workflow,
        *,
        name: str | None = None,
        idempotency_key: str | None = None,
        connection: object = None,
    ) -> WorkflowHandle: ...

    async def enqueue_async(
        self,
        target: Signature | Workflow,
        *,
        name: str | None = None,
        idempotency_key: str | None = None,
        connection: object = None,
    ) -> Job | WorkflowHandle:
        """:meth:`enqueue` for event loops: the store is called on a thread.

        ``connection`` may be an asynchronous connection of this loop (a
        psycopg ``AsyncConnection`` with a transaction open)."""
        with self._on(connection):
            return await asyncio.to_thread(self._enqueue, target, name, idempotency_key)

    def _enqueue(
        self, target: Signature | Workflow, name: str | None, idempotency_key: str | None
    ) -> Job | WorkflowHandle:
        if isinstance(target, Signature):
            if name is not None:
                raise InvalidRequest(
                    f"name={name!r} names a workflow; a single job has its task's name"
                )
            if idempotency_key is not None:  # with the task's key scope, as an option would
                target = replace(target, opts={**target.opts, "idempotency_key": idempotency_key})
            return self.enqueue_requests([self.request_for(target)])[0]
        if isinstance(target, Workflow):
            graph = build_graph(target, self._step_request, name=name)
            if idempotency_key is not None:
                self._require_workflow_keys()
                graph = replace(graph, idempotency_key=idempotency_key)
            self._check_steps(graph)
            record = chain_enqueue_workflow(self._middleware, self._store_workflow)(graph)
            return WorkflowHandle(self, record.id)
        raise InvalidRequest(
            f"app.enqueue takes a signature (task.s(...)) or a workflow, not {target!r}"
        )

    def _require_workflow_keys(self) -> None:
        if not self.driver.capabilities.workflow_idempotency:
            raise InvalidRequest(
                f"{type(self.driver).__name__} does not declare capability "
                "'workflow_idempotency': it cannot keep a workflow's idempotency key"
            )

    def enqueue_many(
        self, signatures: Iterable[Signature], *, connection: object = None
    ) -> list[Job]:
        """Store many jobs in one driver call (all or none); one :class:`Job` each, in order.

        ``connection``: inside that connection's open transaction (:meth:`using`)."""
        requests = self._requests(signatures)
        with self._on(connection):
            return self.enqueue_requests(requests)

    async def enqueue_many_async(
        self, signatures: Iterable[Signature], *, connection: object = None
    ) -> list[Job]:
        """:meth:`enqueue_many` for event loops: the store is called on a thread."""
        requests = self._requests(signatures)
        with self._on(connection):
            return await asyncio.to_thread(self.enqueue_requests, requests)

    def _requests(self, signatures: Iterable[Signature]) -> list[EnqueueRequest]:
        requests = [self.request_for(signature) for signature in signatures]
        if not requests:
            raise InvalidRequest("enqueue_many: nothing to enqueue")
        return requests

    def enqueue_requests(self, requests: Sequence[EnqueueRequest]) -> list[Job]:
        """Store ready-made requests through the enqueue middleware, in one driver call."""
        return chain_enqueue(self._middleware, self._store)(requests)

    def _store(self, requests: Sequence[EnqueueRequest]) -> list[Job]:
        check_store_enforces(self.driver, requests)
        check_store_keeps_labels(self.driver, requests)
        check_store_keeps_scopes(self.driver, requests)
        connection = self._connection.get()
        if connection is None:
            results = self.driver.enqueue(list(requests))
        else:
            results = transactional.enqueue_in(self.driver, connection, list(requests))
        if self.events.wants(ENQUEUED):
            for result in results:
                if result.created:
                    self.events.emit(Event(ENQUEUED, job=result.job))
        return [self._job(result.job, created=result.created) for result in results]

    def _store_workflow(self, graph: WorkflowGraph) -> WorkflowRecord:
        check_store_enforces(self.driver, [step.request for step in graph.steps])
        callback = () if graph.on_failure is None else (graph.on_failure,)
        check_store_keeps_labels(self.driver, [*(s.request for s in graph.steps), *callback])
        connection = self._connection.get()
        if connection is None:
            record = self.driver.enqueue_workflow(graph)
        else:
            record = transactional.enqueue_workflow_in(self.driver, connection, graph)
        if self.events.wants(WORKFLOW_ENQUEUED):
            self.events.emit(Event(WORKFLOW_ENQUEUED, workflow=record))
        return record

    # -- reading and operating ------------------------------------------------------

    def _job(self, record: JobRecord, *, created: bool | None = None) -> Job:
        """The public view of a record, its result decoded by its task's return type
        (``created``: what the enqueue that returned it said)."""
        task = self._tasks.get(record.task)
        if task is None or task.payloads.result_decoder() is None:
            return Job.from_record(record, created=created)
        decode = functools.partial(self._decode_result, record)
        return Job.from_record(record, decode, created=created)

    def decoded_result(self, record: JobRecord) -> Any:
        """A stored job's result as its task's return annotation says (as stored when
        this app has no such task); ``PayloadError`` naming the job when it does not fit."""
        return self._decode_result(record, record.result)

    def _decode_result(self, record: JobRecord, stored: JSON) -> Any:
        task = self._tasks.get(record.task)
        decode = None if task is None else task.payloads.result_decoder()
        if decode is None:
            return stored
        try:
            return decode(stored)
        except PayloadError as exc:
            raise PayloadError(f"job {record.id}: {exc}") from exc.__cause__

    def get_job(self, job: JobRef) -> Job:
        """The job as stored now; ``JobNotFound`` if there is none."""
        return self._job(self.driver.get([_job_id(job)])[0])

    def wait(self, job: JobRef, timeout: float | None = None, *, poll: float = 0.05) -> Job:
        """Block until the job is finished (succeeded, dead or cancelled) and return it.

        A store with notifications (memory, PostgreSQL, Redis) wakes the wait
        when the job finishes; another (SQLite) is read again every ``poll``
        seconds.  Raises ``TimeoutError`` after ``timeout`` seconds (``None``: no limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.get_job(job)
            if current.finished:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {current.id} is still {current.state} after {timeout} s")
            sleep_until_finished(self.driver, [current.id], poll, deadline)

    async def wait_async(
        self, job: JobRef, timeout: float | None = None, *, poll: float = 0.05
    ) -> Job:
        """:meth:`wait` for event loops: never blocks the loop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = await asyncio.to_thread(self.get_job, job)
            if current.finished:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {current.id} is still {current.state} after {timeout} s")
            await sleep_until_finished_async(self.driver, [current.id], poll, deadline)

    def cancel(self, job: JobRef) -> Job:
        """Cancel a job: at once if it waits; a running job is asked to stop and
        ends ``cancelled`` when its worker sees the request; a ``dead`` one leaves
        the dead-letter queue for good (its errors kept)."""
        return self._job(self.driver.cancel([_job_id(job)])[0])

    def requeue(self, job: JobRef) -> Job:
        """Move a ``dead`` (or ``cancelled``) job back to the queue with attempts reset."""
        return self._job(self.driver.requeue([_job_id(job)])[0])

    def list_jobs(
        self,
        state: str | JobState | Iterable[str | JobState] | None = None,
        task: str | Task[Any] | None = None,
        queue: str | None = None,
        limit: int = 100,
        *,
        workflow_id: int | None = None,
        after_id: JobId | None = None,
        created_since: datetime | None = None,
        tag: str | None = None,
    ) -> list[Job]:
        """Jobs matching every given filter, by ascending id, at most ``limit``.

        ``state`` is one state or several; page with ``after_id`` (the last id
        seen); ``created_since`` (an aware datetime) keeps jobs created at or after it;
        ``tag`` keeps the jobs having that tag.
        """
        check_store_selects_tags(self.driver, tag)
        where = JobFilter(
            states=_states(state),
            task=task.name if isinstance(task, Task) else task,
            queue=queue,
            workflow_id=workflow_id,
            after_id=after_id,
            limit=limit,
            created_since=created_since,
            tag=tag,
        )
        return [self._job(record) for record in self.driver.list_jobs(where)]

    def stats(self) -> dict[str, dict[JobState, int]]:
        """How many jobs each queue holds in each state (every state listed, zeros included)."""
        counts: dict[str, dict[JobState, int]] = {}
        for (queue, state), count in self.driver.count().items():
            counts.setdefault(queue, dict.fromkeys(JobState, 0))[JobState(state)] = count
        return counts

    def pause_queue(self, *queues: str) -> list[QueueStatus]:
        """Pause queues in the store: no worker leases their jobs from its next
        poll on, while enqueueing into them goes on and their due jobs become
        ready (they wait).  Pausing a paused queue keeps its first instant."""
        pause_queues(self.driver, queues, True)
        return queue_statuses(self.driver, list(dict.fromkeys(queues)))

    def resume_queue(self, *queues: str) -> list[QueueStatus]:
        """Resume paused queues: workers take their jobs again at their next poll."""
        pause_queues(self.driver, queues, False)
        return queue_statuses(self.driver, list(dict.fromkeys(queues)))

    def list_queues(self) -> list[QueueStatus]:
        """Every queue that holds jobs or is paused, by name, with its jobs by state."""
        return queue_statuses(self.driver)

    def list_workers(self) -> list[WorkerRecord]:
        """The workers registered in the store, by id: each one's host, pid, queues,
        concurrency, version, when it started and was last seen, the ids of the jobs it
        is running, and whether it is gone (unseen for a few lease lengths).  A store
        without a workers registry is an ``InvalidRequest`` naming the capability."""
        driver = self.driver
        if not driver.capabilities.workers:
            raise InvalidRequest(
                f"{type(driver).__name__} does not declare capability 'workers': "
                "it keeps no workers registry"
            )
        return driver.list_workers()

    def prune(
        self, older_than: float | timedelta, *, dead: bool = False, dry_run: bool = False
    ) -> int:
        """Delete succeeded and cancelled jobs finished more than ``older_than`` (seconds
        or timedelta) ago; with ``dead``, dead jobs (the dead-letter queue) and failed
        workflows too.  ``dry_run`` counts them and deletes nothing."""
        if isinstance(older_than, bool) or not isinstance(older_than, int | float | timedelta):
            raise InvalidRequest(f"older_than must be seconds or a timedelta, not {older_than!r}")
        age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
        if age < timedelta(0):
            raise InvalidRequest(f"older_than must not be negative, not {older_than}")
        states = PRUNED_BY_DEFAULT | ({JobState.DEAD} if dead else set())
        return self.driver.prune(self.driver.clock.now() - age, states, dry_run=dry_run)


def default_task_name(function: Callable[..., Any]) -> str:
    """``module.qualname``, with a script run as ``python tasks.py`` named ``tasks``.

    A worker imports the script as the module ``tasks``, so naming its tasks
    after ``__main__`` would make every job enqueued by the script unknown to
    the worker.
    """
    module = function.__module__
    if module == "__main__":
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name  # python -m package.module
        elif isinstance(path := getattr(main, "__file__", None), str):
            module = Path(path).stem
    return f"{module}.{function.__qualname__}"
