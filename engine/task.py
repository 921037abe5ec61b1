"""Tasks: a registered handler, its defaults, and the ways to enqueue it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, overload

from taskharbor.spec import JSON, EnqueueRequest, FlowLimits, InvalidRequest

from .canvas import Signature
from .flow import TaskFlow, call_arguments
from .jobs import Job
from .options import TaskDefaults, build_request, check_options
from .payloads import TaskPayloads

if TYPE_CHECKING:
    from .app import App

P = ParamSpec("P")
Q = ParamSpec("Q")

CALL_TEXT_LIMIT = 200
"""Longest rendering of refused arguments in an error message (characters)."""


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
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have none: their calls are not checked
            self._signature = None
        self._payloads: TaskPayloads | None = None

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def options(self, **opts: Any) -> TaskCall[P]:
        """This task with enqueue options: ``delay`` (seconds or timedelta),
        ``run_at`` (aware datetime), ``idempotency_key``, ``priority``,
        ``queue``, ``max_attempts``, ``concurrency_key`` (this job's key, as it
        is).  Bad options are refused here."""
        return TaskCall(self, opts)

    @property
    def payloads(self) -> TaskPayloads:
        """How this task's arguments and result are encoded and decoded by the app's
        codec (read from the handler's annotations on first use)."""
        payloads = self._payloads
        if payloads is None:
            payloads = TaskPayloads(self.name, self.fn, self._signature, self.app.codec)
            self._payloads = payloads
        return payloads

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Store one job running this task with these arguments (JSON, or typed values
        the app's codec encodes: see :mod:`taskharbor.codec`)."""
        return self.app.enqueue_requests([self.request(args, kwargs, {})])[0]

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """:meth:`enqueue` without blocking the event loop."""
        return await TaskCall(self, {}).enqueue_async(*args, **kwargs)

    @overload
    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature: ...

    @overload
    def s(self: Task[Concatenate[Any, Q]], *args: Q.args, **kwargs: Q.kwargs) -> Signature: ...

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this call, for workflows: a parent's result goes in front of ``args``.

        Type checkers check the call against the handler's parameters, whole or
        without the first one (which a parent's result fills)."""
        return self.signature(args, kwargs, {}, immutable=False)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """An immutable signature: it ignores the result of the step before it."""
        return self.signature(args, kwargs, {}, immutable=True)

    def signature(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        opts: Mapping[str, Any],
        *,
        immutable: bool,
    ) -> Signature:
        """A signature of this task, its arguments checked against the handler as far as
        they can be now: a mutable one may still get a parent's result in front (that is
        known when its workflow is enqueued), so only an immutable one must bind fully."""
        self.check_call(args, kwargs, partial=not immutable)
        return Signature(self.name, args, kwargs, opts, immutable)

    def check_call(
        self,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        leading: int = 0,
        partial: bool = False,
    ) -> None:
        """Refuse arguments the handler cannot take (``InvalidRequest`` naming the task).

        ``leading`` counts the arguments a workflow puts in front (a parent's
        result); ``partial`` accepts arguments still missing.  A job stored with
        such arguments would only fail with ``TypeError`` on every attempt.
        """
        if self._signature is None:
            return
        bind = self._signature.bind_partial if partial else self._signature.bind
        try:
            bind(*((None,) * leading), *args, **kwargs)
        except TypeError as exc:
            given = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
            if len(given) > CALL_TEXT_LIMIT:
                given = given[:CALL_TEXT_LIMIT] + "..."
            front = " after the previous step's result" if leading else ""
            raise InvalidRequest(
                f"cannot enqueue {self.name}({given}){front}: {exc} "
                f"(the handler takes {self._parameters()})"
            ) from None

    def _parameters(self) -> str:
        """The handler's parameters as written, without annotations: ``(a, b=2, *, c)``."""
        assert self._signature is not None
        empty = inspect.Parameter.empty
        bare = [p.replace(annotation=empty) for p in self._signature.parameters.values()]
        return str(self._signature.replace(parameters=bare, return_annotation=empty))

    def request(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        opts: Mapping[str, Any],
        *,
        check: bool = True,
        with_flow: bool = True,
    ) -> EnqueueRequest:
        """The stored request for a call of this task with ``opts``; ``check=False`` leaves
        the arguments to the caller's :meth:`check_call` (a workflow step's input: its
        positional arguments may still get a parent's result in front, so its key
        argument is looked up among its keyword arguments only).  ``with_flow=False``
        leaves the flow limits out (a check of the task's other defaults).

        The arguments are encoded by the app's codec; one that is still not JSON
        then is refused, naming its parameter."""
        if check:
            self.check_call(args, kwargs)
        if args or kwargs:
            args, kwargs = self.payloads.encode_call(args, kwargs)
        flow = self._flow(args if check else (), kwargs, opts) if with_flow else None
        try:
            return build_request(self.name, self.defaults, opts, args, kwargs, self._now, flow)
        except InvalidRequest as exc:
            named = self.payloads.refused_argument(args, kwargs, bound=check)
            raise exc if named is None else named from None

    def _flow(
        self, args: tuple[JSON, ...], kwargs: Mapping[str, JSON], opts: Mapping[str, Any]
    ) -> FlowLimits | None:
        """The job's flow limits, from the task's declaration and the call."""
        key = opts.get("concurrency_key")
        if self.defaults.flow is None and key is None:
            return None
        declared = self.defaults.flow or TaskFlow()
        arguments = call_arguments(self._signature, args, kwargs) if declared.key else {}
        return declared.limits(self.name, arguments, key=key)

    def _now(self) -> datetime:
        """The store's time, for a ``delay``: the store is opened only when one is given."""
        return self.app.driver.clock.now()


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

    @overload
    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature: ...

    @overload
    def s(self: TaskCall[Concatenate[Any, Q]], *args: Q.args, **kwargs: Q.kwargs) -> Signature: ...

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature carrying these options."""
        return self.task.signature(args, kwargs, self.opts, immutable=False)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """An immutable signature carrying these options."""
        return self.task.signature(args, kwargs, self.opts, immutable=True)
