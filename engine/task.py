"""Tasks: a registered handler, its defaults, and the ways to enqueue it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec

from taskharbor.spec import JSON, EnqueueRequest

from .canvas import Signature
from .jobs import Job
from .options import TaskDefaults, build_request, check_options

if TYPE_CHECKING:
    from .app import App

P = ParamSpec("P")


class Task(Generic[P]):
    """A handler registered with ``@app.task(...)``.

    Calling the task runs the function directly, in the caller's process;
    :meth:`enqueue` stores a job for a worker instead.  ``name`` is what is
    stored with each job: a worker runs the task registered under that name.
    """

    def __init__(self, app: App, fn: Callable[P, Any], name: str, defaults: TaskDefaults) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.defaults = defaults
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def options(self, **opts: Any) -> TaskCall[P]:
        """This task with enqueue options: ``delay`` (seconds or timedelta),
        ``run_at`` (aware datetime), ``idempotency_key``, ``priority``,
        ``queue``, ``max_attempts``.  Bad options are refused here."""
        return TaskCall(self, opts)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Store one job running this task with these (JSON) arguments."""
        return self.app.enqueue_requests([self.request(args, kwargs, {})])[0]

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """:meth:`enqueue` without blocking the event loop."""
        return await TaskCall(self, {}).enqueue_async(*args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this call, for workflows: a parent's result goes in front of ``args``."""
        return Signature(self.name, args, kwargs, {}, False)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: it ignores the result of the step before it."""
        return Signature(self.name, args, kwargs, {}, True)

    def request(
        self, args: tuple[JSON, ...], kwargs: Mapping[str, JSON], opts: Mapping[str, Any]
    ) -> EnqueueRequest:
        """The stored request for a call of this task with ``opts``."""
        clock = self.app.driver.clock
        return build_request(self.name, self.defaults, opts, args, kwargs, clock.now)


class TaskCall(Generic[P]):
    """A task with enqueue options set (what ``task.options(...)`` returns)."""

    def __init__(self, task: Task[P], opts: Mapping[str, Any]) -> None:
        check_options(opts, f"task {task.name}")
        self.task = task
        self.opts = dict(opts)

    def __repr__(self) -> str:
        return f"<TaskCall {self.task.name} {self.opts}>"

    def options(self, **opts: Any) -> TaskCall[P]:
        """More options; later ones win."""
        return TaskCall(self.task, {**self.opts, **opts})

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Store one job; raises ``InvalidRequest`` (nothing stored) for a bad payload."""
        request = self.task.request(args, kwargs, self.opts)
        return self.task.app.enqueue_requests([request])[0]

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """:meth:`enqueue` on a thread, so the event loop keeps running."""
        request = self.task.request(args, kwargs, self.opts)
        jobs = await asyncio.to_thread(self.task.app.enqueue_requests, [request])
        return jobs[0]

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature carrying these options."""
        return Signature(self.task.name, args, kwargs, dict(self.opts), False)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature carrying these options."""
        return Signature(self.task.name, args, kwargs, dict(self.opts), True)
