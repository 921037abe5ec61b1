"""Workflows: signatures, ``chain``, ``group`` and ``chord``, and the graph they become.

A workflow is described in memory first (signatures nested in chains, groups
and chords), then :func:`build_graph` turns it into the
:class:`~taskharbor.spec.WorkflowGraph` that one driver call stores
atomically.  From then on the store, not a coordinator, moves the workflow on:
finishing a step releases (or cancels) its dependents in the same transaction.
:class:`WorkflowHandle` reads the stored workflow back.

What each shape means (docs/workflows.md says the same with examples):

* a chain step receives the previous element's result as its first argument,
  unless it is immutable (``.si()``); it always waits for that element;
* the result of a signature is its task's result; of a chain, its last
  element's result; of a group, the list of its members' results (nested lists
  for nested groups); of a chord, its callback's result;
* a chord callback receives the list of its header members' results, in
  header order; so does an element that follows a group in a chain;
* a partial chord (``chord(header, callback, partial=True)``) runs its
  callback once every member has ended, however it ended: the callback
  receives the results of the members that succeeded, in header order, then a
  list of :class:`MemberFailure` for the others; a member that dies does not
  fail the workflow, which ends as its callback does;
* every member of a group that follows an element in a chain receives that
  element's result;
* ``workflow.on_failure(alert.s(...))`` gives the whole workflow a failure
  callback: it runs once if a step ends dead, with a :class:`StepFailure` in
  front of its arguments.

An element waits exactly for the steps its input is made of: the steps named
by the previous element's result.  (Those are always the previous element's
last steps, so waiting for them waits for everything before them too.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol, TypeAlias, TypedDict, runtime_checkable

from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    FINISHED_JOB_STATES,
    WORKFLOW_CANCELLED,
    Driver,
    EnqueueRequest,
    ErrorInfo,
    InvalidRequest,
    JobId,
    JobRecord,
    JobState,
    ResultRef,
    StepSpec,
    TaskHarborError,
    WorkflowGraph,
    WorkflowId,
    WorkflowRecord,
    WorkflowState,
)
from taskharbor.spec.records import check_name, map_ref, ref_indexes

from .waiting import sleep_until_finished, sleep_until_finished_async

_EMPTY: Mapping[str, Any] = MappingProxyType({})
"""The kwargs and opts of most signatures, shared: read-only, so sharing is safe."""


@dataclass(frozen=True, slots=True)
class Signature:
    """One task call to make later: the unit workflows are built from.

    ``opts`` are enqueue options (``delay``, ``run_at``, ``priority``,
    ``queue``, ``max_attempts``); the App merges them over the task's defaults
    and validates them when the workflow is enqueued.  An ``immutable``
    signature (``task.si(...)``) ignores the result of the element before it.
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    opts: Mapping[str, Any] = field(default_factory=dict)
    immutable: bool = False

    def __post_init__(self) -> None:
        check_name(self.task, "signature task name")
        if not isinstance(self.args, tuple):
            raise InvalidRequest(
                f"signature of {self.task}: args must be a tuple, not {type(self.args).__name__}"
            )
        for what in ("kwargs", "opts"):
            value = getattr(self, what)
            if not isinstance(value, Mapping):
                raise InvalidRequest(
                    f"signature of {self.task}: {what} must be a mapping, "
                    f"not {type(value).__name__}"
                )
            # A private read-only copy: later changes to the caller's dict do not leak in.
            object.__setattr__(self, what, MappingProxyType(dict(value)) if value else _EMPTY)
        if not isinstance(self.immutable, bool):
            raise InvalidRequest(f"signature of {self.task}: immutable must be a bool")

    def options(self, **opts: Any) -> Signature:
        """A copy with ``opts`` merged over this signature's options."""
        return replace(self, opts={**self.opts, **opts})


class Workflow:
    """Base of :class:`Chain`, :class:`Group` and :class:`Chord`."""

    __slots__ = ()

    def on_failure(self, callback: Signature) -> OnFailure:
        """This workflow with a failure callback, for enqueueing.

        When a step ends ``dead`` the workflow becomes ``failed`` and, in the same
        store transaction, ``callback`` is released once with a
        :class:`StepFailure` describing that step in front of its own arguments
        (``alert.s("ops")`` runs ``alert(failure, "ops")``).  It is cancelled if
        the workflow succeeds or is cancelled.  Give it to the outermost workflow
        (the one you enqueue); the workflow's own state does not depend on it.
        """
        return OnFailure(self, callback)


Item: TypeAlias = Signature | Workflow
"""What workflows are made of: signatures and other workflows."""


@dataclass(frozen=True, slots=True)
class Chain(Workflow):
    """Elements run one after the other; each gets the previous one's result."""

    elements: tuple[Item, ...]

    def __post_init__(self) -> None:
        _check_items(self.elements, "chain", "step")


@dataclass(frozen=True, slots=True)
class Group(Workflow):
    """Members run independently; the group's result is the list of theirs."""

    members: tuple[Item, ...]

    def __post_init__(self) -> None:
        _check_items(self.members, "group", "member")


@dataclass(frozen=True, slots=True)
class Chord(Workflow):
    """A header group, then a callback that gets the list of the header's results
    (``partial``: of those that succeeded, once all have ended, and their failures)."""

    header: tuple[Item, ...]
    callback: Item
    partial: bool = False

    def __post_init__(self) -> None:
        _check_items(self.header, "chord header", "member")
        if not isinstance(self.partial, bool):
            raise InvalidRequest(f"chord partial must be True or False, not {self.partial!r}")
        if not isinstance(self.callback, Signature | Workflow):
            raise InvalidRequest(
                "chord callback must be a signature (task.s(...)) or a workflow, "
                f"not {type(self.callback).__name__}"
            )


@dataclass(frozen=True, slots=True)
class OnFailure(Workflow):
    """A workflow and the callback that runs once if it fails (see :meth:`Workflow.on_failure`)."""

    workflow: Workflow
    callback: Signature

    def __post_init__(self) -> None:
        if not isinstance(self.workflow, Workflow):
            raise InvalidRequest(
                f"on_failure belongs to a chain, group or chord, not {type(self.workflow).__name__}"
            )
        if isinstance(self.workflow, OnFailure):
            raise InvalidRequest("this workflow already has an on_failure callback")
        if not isinstance(self.callback, Signature):
            raise InvalidRequest(
                f"on_failure takes a signature (task.s(...)), not {type(self.callback).__name__}"
            )
        if self.callback.immutable:
            raise InvalidRequest(
                f"on_failure({self.callback.task}.si(...)): the callback receives the failure "
                "as its first argument, so give it as task.s(...)"
            )


class StepFailure(TypedDict):
    """What a failure callback receives first: the workflow, and the step that ended
    dead (its job id, task, attempt, and its last error's type and message)."""

    workflow_id: int
    job_id: int
    task: str
    attempt: int
    type: str | None
    message: str | None


class MemberFailure(TypedDict):
    """What a partial chord's callback hears about one member that did not succeed:
    its position in the header (``index``; a member that is a group takes one place
    per job of it), its job id and task, whether it ended ``dead`` or ``cancelled``,
    its attempts, its last error's type and message, and a cancelled member's
    ``reason`` (a chain member whose earlier step died: ``dependency <id> dead``)."""

    index: int
    job_id: int
    task: str
    state: str
    attempt: int
    type: str | None
    message: str | None
    reason: str | None


def chain(*elements: Item) -> Chain:
    """``chain(a.s(1), b.s(), c.s())``: ``b`` gets ``a``'s result, ``c`` gets ``b``'s."""
    return Chain(elements)


def group(*members: Item) -> Group:
    """``group(a.s(1), a.s(2))``: both run at once; the result is ``[a(1), a(2)]``."""
    return Group(members)


def chord(header: Iterable[Item] | Group, callback: Item, *, partial: bool = False) -> Chord:
    """``chord([a.s(1), a.s(2)], total.s())``: ``total`` gets ``[a(1), a(2)]``.

    ``header`` is an iterable of signatures and workflows, or a :class:`Group`.
    With ``partial=True`` the callback runs once every member has ended, with the
    results of those that succeeded and a list of :class:`MemberFailure` for the
    others: ``total(results, failures)``.
    """
    if isinstance(header, Group):
        return Chord(header.members, callback, partial)
    if isinstance(header, Signature | Workflow) or not isinstance(header, Iterable):
        raise InvalidRequest(
            "chord header must be a list of signatures or workflows, "
            f"as in chord([a.s(1), a.s(2)], total.s()); got {type(header).__name__}"
        )
    return Chord(tuple(header), callback, partial)


def _check_items(items: tuple[Item, ...], shape: str, noun: str) -> None:
    if not items:
        raise InvalidRequest(f"{shape} needs at least one {noun}")
    for index, item in enumerate(items):
        if isinstance(item, Signature | Workflow):
            continue
        hint = ""
        if isinstance(item, list | tuple):
            hint = f"; pass the {noun}s as separate arguments, not in a {type(item).__name__}"
        elif callable(item):
            hint = "; use a signature: task.s(...) or task.si(...)"
        raise InvalidRequest(
            f"{shape} {noun} {index} must be a signature (task.s(...)) or a workflow, "
            f"not {type(item).__name__}{hint}"
        )


# -- the graph ------------------------------------------------------------------


def build_graph(
    workflow: Item,
    request_for: Callable[[Signature], EnqueueRequest],
    *,
    name: str | None = None,
) -> WorkflowGraph:
    """The steps of ``workflow`` in topological order, with their dependencies and inputs.

    ``request_for`` turns a signature into the job to store (the App merges
    the task's defaults with the signature's options and validates them).
    A single signature is a one-step graph.
    """
    if not isinstance(workflow, Signature | Workflow):
        raise InvalidRequest(
            f"a workflow must be a signature or a chain, group or chord, "
            f"not {type(workflow).__name__}"
        )
    callback = None
    if isinstance(workflow, OnFailure):
        callback = request_for(workflow.callback)
        workflow = workflow.workflow
    builder = _GraphBuilder(request_for)
    result = builder.add(workflow, None)
    return WorkflowGraph(tuple(builder.steps), result, name, on_failure=callback)


class _GraphBuilder:
    """Appends steps in topological order; ``add`` returns the added item's result ref."""

    def __init__(self, request_for: Callable[[Signature], EnqueueRequest]) -> None:
        self._request_for = request_for
        self.steps: list[StepSpec] = []

    def add(self, item: Item, before: ResultRef | None, partial: bool = False) -> ResultRef:
        """Add ``item`` after the element whose result is ``before`` (None: nothing);
        ``partial``: the steps of ``item`` that wait for ``before`` are partial."""
        match item:
            case Signature():
                return self._add_step(item, before, partial)
            case Chain(elements=elements):
                for element in elements:
                    before = self.add(element, before, partial)
                    partial = False  # only the first element waits for the header
                assert before is not None  # a chain has at least one element
                return before
            case Group(members=members):
                return [self.add(member, before, partial) for member in members]
            case Chord(header=header, callback=callback, partial=tolerant):
                results: ResultRef = [self.add(member, before, partial) for member in header]
                return self.add(callback, results, tolerant)
            case OnFailure():
                raise InvalidRequest(
                    "on_failure applies to a whole workflow: give it to the outermost "
                    "workflow, the one you enqueue, not to a part of it"
                )
        raise InvalidRequest(f"unknown workflow item {item!r}")

    def _add_step(self, signature: Signature, before: ResultRef | None, partial: bool) -> int:
        request = self._request_for(signature)
        if not isinstance(request, EnqueueRequest):
            raise TypeError(f"request_for returned {type(request).__name__}, not EnqueueRequest")
        after = () if before is None else tuple(ref_indexes(before))
        step_input = None if signature.immutable else before
        self.steps.append(StepSpec(request, after=after, input=step_input, partial=partial))
        return len(self.steps) - 1


# -- reading a stored workflow ---------------------------------------------------


class HasDriver(Protocol):
    """What a handle needs of the App: its store."""

    @property
    def driver(self) -> Driver: ...


@runtime_checkable
class DecodesResults(Protocol):
    """An App that decodes results by their tasks' return annotations (typed payloads)."""

    def decoded_result(self, record: JobRecord) -> Any: ...


@dataclass(frozen=True, slots=True)
class StepStatus:
    """One step of a stored workflow; ``reason`` says why it was cancelled."""

    job_id: JobId
    task: str
    state: JobState
    reason: str | None


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A stored workflow's state and its steps' states, in graph order."""

    id: WorkflowId
    state: WorkflowState
    steps: tuple[StepStatus, ...]
    name: str | None = None
    """The name given at enqueue (``app.enqueue(workflow, name=...)``), if any."""
    on_failure: StepStatus | None = None
    """The failure callback (not a step), if the workflow has one."""


class WorkflowFailed(TaskHarborError):
    """The workflow ended ``failed`` or ``cancelled``, so it has no result.

    ``step`` is the job that ended it: the first dead step of a failed
    workflow, or the first step cancelled on its own account (not because a
    step it needs failed) of a cancelled one.  It is ``None`` only when an
    operator requeued that step between our two reads of the store.
    """

    def __init__(
        self, workflow_id: WorkflowId, state: WorkflowState, step: JobRecord | None
    ) -> None:
        self.workflow_id = workflow_id
        self.state = state
        self.step = step
        message = f"workflow {workflow_id} {state}"
        if step is not None:
            message += f": step {step.id} (task {step.task}) is {step.state}"
            if step.reason is not None:
                message += f" ({step.reason})"
            if step.errors:
                last: ErrorInfo = step.errors[-1]
                message += f"; last error on attempt {last.attempt}: {last.type}: {last.message}"
        super().__init__(message)


class WorkflowNotFinished(TaskHarborError):
    """The workflow is still running: it has no result yet."""

    def __init__(self, workflow_id: WorkflowId) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"workflow {workflow_id} is still running; wait(timeout=...) for it to finish"
        )


_FIRST_POLL = 0.005
_MAX_POLL = 0.25


def _deadline(timeout: float | None) -> float | None:
    """The monotonic instant a wait of ``timeout`` seconds ends; checks the timeout."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
    ):
        raise InvalidRequest(f"timeout must be a number of seconds >= 0, not {timeout!r}")
    return None if timeout is None else time.monotonic() + timeout


class WorkflowHandle:
    """A stored workflow, read through the App's driver."""

    def __init__(self, app: HasDriver, workflow_id: WorkflowId) -> None:
        self._app = app
        self._id = workflow_id

    @property
    def id(self) -> WorkflowId:
        return self._id

    def __repr__(self) -> str:
        return f"WorkflowHandle(id={self._id})"

    def status(self) -> WorkflowStatus:
        """The workflow's state and each step's job id, task and state."""
        record = self._app.driver.get_workflow(self._id)
        callback = () if record.on_failure is None else (record.on_failure,)
        jobs = self._app.driver.get((*record.steps, *callback))
        steps = tuple(StepStatus(job.id, job.task, job.state, job.reason) for job in jobs)
        if callback:
            return WorkflowStatus(record.id, record.state, steps[:-1], record.name, steps[-1])
        return WorkflowStatus(record.id, record.state, steps, record.name)

    def cancel(self) -> WorkflowState:
        """Cancel every step not finished yet (running ones are asked to stop).

        Returns the workflow's state after that: ``cancelled``, or ``failed``
        if a step had already ended dead.  A succeeded workflow raises
        ``InvalidTransition``.
        """
        return self._app.driver.cancel_workflow(self._id).state

    def wait(self, timeout: float | None = None) -> WorkflowState:
        """Block until the workflow is no longer running; return its state.

        A store with notifications wakes the wait when one of the steps
        finishes (a workflow ends only then); another is polled, quickly at
        first and then every quarter second.  ``timeout=None`` waits as long
        as it takes; otherwise ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = _deadline(timeout)
        pause = _FIRST_POLL
        while True:
            record = self._app.driver.get_workflow(self._id)
            if record.state != WorkflowState.RUNNING:
                return record.state
            self._check_time_left(deadline, timeout)
            sleep_until_finished(self._app.driver, self._watched(record), pause, deadline)
            pause = min(pause * 2, _MAX_POLL)

    async def wait_async(self, timeout: float | None = None) -> WorkflowState:
        """:meth:`wait` for event loops: each read of the store and each wait for a
        notification runs on a thread, so the loop is never blocked."""
        deadline = _deadline(timeout)
        pause = _FIRST_POLL
        while True:
            record = await asyncio.to_thread(self._app.driver.get_workflow, self._id)
            if record.state != WorkflowState.RUNNING:
                return record.state
            self._check_time_left(deadline, timeout)
            watched = await asyncio.to_thread(self._watched, record)
            await sleep_until_finished_async(self._app.driver, watched, pause, deadline)
            pause = min(pause * 2, _MAX_POLL)

    def _watched(self, record: WorkflowRecord) -> list[JobId]:
        """The steps a waiter on ``record`` waits for: those not finished yet, read
        from a notifying store (a store that polls is not asked)."""
        driver = self._app.driver
        if not driver.capabilities.notifications:
            return list(record.steps)
        steps = driver.get(record.steps)
        return [step.id for step in steps if step.state not in FINISHED_JOB_STATES] or [
            step.id for step in steps
        ]

    def _check_time_left(self, deadline: float | None, timeout: float | None) -> None:
        """``TimeoutError`` when the wait's deadline has passed."""
        if deadline is not None and deadline - time.monotonic() <= 0:
            raise TimeoutError(f"workflow {self._id} still running after {timeout} s")

    def result(self) -> Any:
        """The workflow's result: a chain's last result, a group's list, a chord's callback's.

        Each step's result is decoded by its task's return annotation when the
        handle's app has the task (typed payloads).  Raises
        :class:`WorkflowNotFinished` while it runs and :class:`WorkflowFailed`
        (naming the step that ended it) if it failed or was cancelled.
        """
        record = self._app.driver.get_workflow(self._id)
        if record.state == WorkflowState.RUNNING:
            raise WorkflowNotFinished(self._id)
        jobs = self._app.driver.get(record.steps)
        if record.state != WorkflowState.SUCCEEDED:
            raise WorkflowFailed(self._id, record.state, _culprit(record.state, jobs))
        app = self._app
        if isinstance(app, DecodesResults):
            return map_ref(record.result, {job.id: app.decoded_result(job) for job in jobs})
        return map_ref(record.result, {job.id: job.result for job in jobs})


_OWN_REASONS = frozenset({CANCELLED_BY_REQUEST, WORKFLOW_CANCELLED})
"""Cancellation reasons of a step cancelled for itself, not by a failed dependency."""


def _culprit(state: WorkflowState, jobs: list[JobRecord]) -> JobRecord | None:
    """The step that ended a failed or cancelled workflow (see :class:`WorkflowFailed`):
    of a failed one, the first dead step whose failure no partial chord absorbed."""
    if state == WorkflowState.FAILED:
        dead = [job for job in jobs if job.state == JobState.DEAD]
        return next((job for job in dead if not _absorbed(job, jobs)), next(iter(dead), None))
    cancelled = [job for job in jobs if job.state == JobState.CANCELLED]
    own = [job for job in cancelled if job.reason in _OWN_REASONS]
    return next(iter(own or cancelled), None)


def _absorbed(step: JobRecord, jobs: list[JobRecord]) -> bool:
    """Whether a step after ``step`` was not cancelled by it: a partial chord's callback
    ran (or waits) after it, so its end did not fail the workflow."""
    downstream = {step.id}
    for job in jobs:  # graph order: every step after the steps it waits for
        if downstream.intersection(job.depends_on):
            if job.state != JobState.CANCELLED:
                return True
            downstream.add(job.id)
    return False


__all__ = [
    "Chain",
    "Chord",
    "Group",
    "Item",
    "MemberFailure",
    "OnFailure",
    "Signature",
    "StepFailure",
    "StepStatus",
    "Workflow",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowNotFinished",
    "WorkflowStatus",
    "build_graph",
    "chain",
    "chord",
    "group",
]
