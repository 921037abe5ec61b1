"""Middleware: around-hooks for enqueueing and for running jobs.

Subclass :class:`Middleware`, override the hooks you need and pass instances
to ``th.App(..., middleware=[...])`` (or ``app.use(m)``).  The first
middleware is the outermost: it sees a call first and its outcome last.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING

from taskharbor.spec import EnqueueRequest, WorkflowGraph, WorkflowRecord

from .context import JobContext

if TYPE_CHECKING:
    from .jobs import Job

EnqueueCall = Callable[[Sequence[EnqueueRequest]], "list[Job]"]
"""Stores a batch of requests and returns the jobs, one per request."""
WorkflowCall = Callable[[WorkflowGraph], WorkflowRecord]
"""Stores a workflow's graph in one piece and returns the stored workflow."""


class Middleware:
    """Base class of middleware; every hook passes through unchanged by default."""

    def around_enqueue(
        self, requests: Sequence[EnqueueRequest], call_next: EnqueueCall
    ) -> list[Job]:
        """Wrap the storing of a batch of jobs; call ``call_next(requests)`` once.

        May log, time, or replace requests (for instance to add tracing
        headers); must return what ``call_next`` returned.  Workflow graphs are
        stored in one piece and pass through :meth:`around_enqueue_workflow`
        instead.
        """
        return call_next(requests)

    def around_enqueue_workflow(
        self, graph: WorkflowGraph, call_next: WorkflowCall
    ) -> WorkflowRecord:
        """Wrap the storing of a whole workflow; call ``call_next(graph)`` once.

        May replace the graph (its steps' requests, for instance); must return
        what ``call_next`` returned.
        """
        return call_next(graph)

    def around_job(self, job: JobContext) -> AbstractContextManager[None]:
        """A context manager entered before the handler runs and exited after.

        Write it with ``@contextlib.contextmanager``: code before ``yield``
        runs first, an exception of the handler is raised at the ``yield``
        (re-raise it, or the attempt counts as a success with result ``None``).
        Sync handlers enter it on their worker thread, async handlers on the
        worker's event loop, with ``th.current_job()`` already set.
        """
        return nullcontext()


def chain_enqueue(middleware: Sequence[Middleware], store: EnqueueCall) -> EnqueueCall:
    """``store`` wrapped by every middleware's ``around_enqueue``, the first outermost."""
    call = store
    for layer in reversed(middleware):
        call = _wrap_enqueue(layer, call)
    return call


def chain_enqueue_workflow(middleware: Sequence[Middleware], store: WorkflowCall) -> WorkflowCall:
    """``store`` wrapped by every middleware's ``around_enqueue_workflow``, the first outermost."""
    call = store
    for layer in reversed(middleware):
        call = functools.partial(layer.around_enqueue_workflow, call_next=call)
    return call


def _wrap_enqueue(layer: Middleware, call_next: EnqueueCall) -> EnqueueCall:
    def call(requests: Sequence[EnqueueRequest]) -> list[Job]:
        return layer.around_enqueue(requests, call_next)

    return call


def around_job(middleware: Sequence[Middleware], job: JobContext) -> AbstractContextManager[None]:
    """Every middleware's ``around_job`` entered in order (the first outermost); a
    no-op context without middleware, the common case on the worker's hot path."""
    if not middleware:
        return nullcontext()
    if len(middleware) == 1:  # no stack to keep for one layer (tracing alone, say)
        return middleware[0].around_job(job)
    return _around_job(middleware, job)


@contextmanager
def _around_job(middleware: Sequence[Middleware], job: JobContext) -> Iterator[None]:
    with ExitStack() as stack:
        for layer in middleware:
            stack.enter_context(layer.around_job(job))
        yield
