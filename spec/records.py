"""The typed records the driver SPI exchanges.  All frozen; all validated.

Requests (``EnqueueRequest``, ``Completion``, ...) validate themselves in
``__post_init__`` so bad input is refused where it is written, with an
:class:`~taskharbor.spec.errors.InvalidRequest` that names the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias

from .errors import InvalidRequest, LeaseLost
from .flow import FlowLimits
from .keys import UNTIL_PRUNED, KeyScope, check_key_scope
from .limits import EARLIEST_INSTANT as EARLIEST_INSTANT
from .limits import LATEST_INSTANT as LATEST_INSTANT
from .limits import MAX_DURATION_SECONDS as MAX_DURATION_SECONDS
from .limits import check_aware as check_aware
from .limits import check_seconds as check_seconds
from .metadata import Progress, check_meta, check_tag, check_tags
from .retry import DEFAULT_RETRY, RetryPolicy
from .table import JobState, WorkflowState
from .values import JSON as JSON
from .values import JSON_MAX_DEPTH as JSON_MAX_DEPTH
from .values import _check_text
from .values import check_json as check_json

JobId: TypeAlias = int
WorkflowId: TypeAlias = int

ResultRef: TypeAlias = "int | list[ResultRef]"
"""Where a workflow value comes from: a step (index, or job id once stored), or a list of refs."""

PRIORITY_MIN = -32768
PRIORITY_MAX = 32767
MAX_ATTEMPTS_LIMIT = 10_000
NAME_MAX_LENGTH = 255
HEADERS_MAX_ITEMS = 32
HEADER_VALUE_MAX_LENGTH = 2048
"""Bounds of a job's ``headers``: at most 32, each value at most 2048 characters (a
W3C ``traceparent`` is 55, a ``tracestate`` should fit in 512)."""


CANCELLED_BY_REQUEST = "cancelled by request"
"""``reason`` of a job cancelled by ``Driver.cancel`` (directly or after running)."""

WORKFLOW_CANCELLED = "workflow cancelled"
"""``reason`` of a step cancelled by ``Driver.cancel_workflow`` (at once, or after running)."""

WORKFLOW_SUCCEEDED = "workflow succeeded"
"""``reason`` of a failure callback cancelled because its workflow succeeded."""

CALLBACK_CANCELS: Mapping[WorkflowState, str] = {
    WorkflowState.SUCCEEDED: WORKFLOW_SUCCEEDED,
    WorkflowState.CANCELLED: WORKFLOW_CANCELLED,
}
"""The workflow states whose arrival cancels a pending failure callback, with the
``reason`` it ends with (spec/spi.py, "Failure callbacks")."""


LEASE_EXPIRED_TYPE = "LeaseExpired"
LEASE_EXPIRED_MESSAGE = "the lease expired before its worker reported"
"""The error ``lease_expired`` appends (type and message), the same in every driver."""


def dependency_reason(job_id: int, state: str) -> str:
    """``reason`` of a workflow step cancelled because a step it needs ended badly."""
    return f"dependency {job_id} {state}"


def check_name(value: object, what: str) -> None:
    """A task, queue or key name: a non-empty str of at most 255 characters."""
    if type(value) is str and value in _CHECKED_NAMES:
        return
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what} must be a non-empty string, not {value!r}")
    if len(value) > NAME_MAX_LENGTH:
        raise InvalidRequest(f"{what} is longer than {NAME_MAX_LENGTH} characters")
    _check_text(value, what)
    if len(_CHECKED_NAMES) < _CHECKED_NAMES_LIMIT:
        _CHECKED_NAMES.add(value)


_CHECKED_NAMES: set[str] = set()
"""Names already found valid.  Every job names its task and queue, and an application
has few of those, so each is checked once rather than per job."""
_CHECKED_NAMES_LIMIT = 4096
"""Beyond this many (idempotency keys are names too, and each is new) stop remembering."""


def check_headers(value: object, what: str = "headers") -> None:
    """A job's headers: a mapping of at most :data:`HEADERS_MAX_ITEMS` names (each a
    :func:`check_name`) to str values of at most :data:`HEADER_VALUE_MAX_LENGTH`
    characters, without NUL.  Carried for propagation (a W3C trace context), never
    interpreted by the store."""
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{what} must be a mapping of str to str, not {type(value).__name__}")
    if len(value) > HEADERS_MAX_ITEMS:
        raise InvalidRequest(f"{what}: {len(value)} headers, at most {HEADERS_MAX_ITEMS} allowed")
    for name, text in value.items():
        check_name(name, f"{what} name")
        if not isinstance(text, str):
            raise InvalidRequest(f"{what}[{name!r}] must be a str, not {type(text).__name__}")
        if len(text) > HEADER_VALUE_MAX_LENGTH:
            raise InvalidRequest(
                f"{what}[{name!r}] is longer than {HEADER_VALUE_MAX_LENGTH} characters"
            )
        _check_text(text, f"{what}[{name!r}]")


def _check_int(value: object, what: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{what} must be an int, not {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"{what} must be between {low} and {high}, not {value}")


def _check_job_id(value: object, what: str = "job id") -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{what} must be an int, not {value!r}")


def check_workflow_id(value: object) -> None:
    """A workflow id: an int."""
    _check_job_id(value, "workflow id")


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    """One job to store.

    ``run_at=None`` means now.  ``priority``: larger runs first.
    ``idempotency_key``: while a stored job holds this key, enqueueing the same
    key again stores nothing and returns that job; ``key_scope`` says how long
    the new job holds it (:mod:`taskharbor.spec.keys`: until pruned, the
    default; while unfinished; or for a window from enqueue), and is refused
    without a key.  ``retry``: how long the job
    waits after a failed attempt, stored with it so that a rescue
    (``lease_expired``) waits as a reported failure would.  ``flow``: the limits
    that hold the job back from ``lease`` (:mod:`taskharbor.spec.flow`), stored
    with it; only a driver with the ``flow_control`` capability accepts them.
    ``headers``: small
    str-to-str metadata carried with the job for propagation (a W3C trace
    context's ``traceparent`` and ``tracestate``), stored as given and returned
    with the job; bounded by :func:`check_headers`.  ``tags`` (a list is kept as a
    tuple) and ``meta``: labels and a small JSON object for people, stored as given
    and returned with the job (:mod:`taskharbor.spec.metadata`); only a driver with
    the ``job_metadata`` capability is given them.
    """

    task: str
    args: tuple[JSON, ...] = ()
    kwargs: Mapping[str, JSON] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    run_at: datetime | None = None
    max_attempts: int = 3
    idempotency_key: str | None = None
    retry: RetryPolicy = DEFAULT_RETRY
    flow: FlowLimits | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    meta: Mapping[str, JSON] = field(default_factory=dict)
    key_scope: KeyScope = UNTIL_PRUNED

    def __post_init__(self) -> None:
        check_name(self.task, "task name")
        check_name(self.queue, "queue name")
        if not isinstance(self.args, tuple):
            raise InvalidRequest(f"args must be a tuple, not {type(self.args).__name__}")
        if type(self.kwargs) is not dict and not isinstance(self.kwargs, Mapping):
            raise InvalidRequest(f"kwargs must be a mapping, not {type(self.kwargs).__name__}")
        if self.args:  # most jobs of a bulk enqueue carry little: skip what is empty
            check_json(list(self.args), f"{self.task} args")
        if self.kwargs:
            check_json(dict(self.kwargs), f"{self.task} kwargs")
        _check_int(self.priority, "priority", PRIORITY_MIN, PRIORITY_MAX)
        _check_int(self.max_attempts, "max_attempts", 1, MAX_ATTEMPTS_LIMIT)
        if self.run_at is not None:
            check_aware(self.run_at, "run_at")
        if self.idempotency_key is not None:
            check_name(self.idempotency_key, "idempotency_key")
        if type(self.retry) is not RetryPolicy:
            raise InvalidRequest(f"retry must be a RetryPolicy, not {self.retry!r}")
        if self.flow is not None and type(self.flow) is not FlowLimits:
            raise InvalidRequest(f"flow must be FlowLimits or None, not {self.flow!r}")
        if type(self.headers) is not dict or self.headers:  # most jobs carry none
            check_headers(self.headers, f"{self.task} headers")
        if type(self.tags) is not tuple or self.tags:
            object.__setattr__(self, "tags", check_tags(self.tags, f"{self.task} tags"))
        if type(self.meta) is not dict or self.meta:
            check_meta(self.meta, f"{self.task} meta")
        if self.key_scope is not UNTIL_PRUNED:
            check_key_scope(self.key_scope, self.idempotency_key)


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """What a worker says about a failed attempt."""

    type: str
    message: str
    traceback: str | None = None

    def __post_init__(self) -> None:
        check_name(self.type, "error type")
        if not isinstance(self.message, str):
            raise InvalidRequest(f"error message must be a str, not {self.message!r}")


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """One recorded error: the report, the attempt it ended, and when (driver clock)."""

    attempt: int
    at: datetime
    type: str
    message: str
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A stored job, as every driver returns it.

    ``run_at`` is when the job is (or became) due: its scheduled time, its
    retry time, or the time it was enqueued or released.  ``attempt`` counts
    the attempts used (leases not given back by ``snooze``).  ``finished_at``
    is set when the job enters succeeded, dead or cancelled, and cleared when
    it leaves.  ``reason`` says why a job is cancelled; it is ``None`` otherwise,
    except on a ``running`` workflow step whose workflow was cancelled: there it
    is already ``WORKFLOW_CANCELLED``, the reason its cancel will end with.
    ``depends_on`` holds the job ids of the workflow steps it waits for.
    ``retry`` is the policy it was enqueued with (see :mod:`taskharbor.spec.retry`);
    ``flow`` the flow limits (see :mod:`taskharbor.spec.flow`);
    ``headers`` the headers it was enqueued with (an empty mapping when none);
    ``tags`` and ``meta`` the ones it was enqueued with, ``progress`` what its
    current or last attempt last reported (:mod:`taskharbor.spec.metadata`).
    ``key_scope`` the scope of its idempotency key (:mod:`taskharbor.spec.keys`).
    The record keeps ``idempotency_key`` after the job gave the key up.
    """

    id: JobId
    task: str
    queue: str
    state: JobState
    args: tuple[JSON, ...]
    kwargs: Mapping[str, JSON]
    priority: int
    run_at: datetime
    attempt: int
    max_attempts: int
    created_at: datetime
    idempotency_key: str | None = None
    lease_token: str | None = None
    lease_expires_at: datetime | None = None
    leased_by: str | None = None
    cancel_requested: bool = False
    result: JSON = None
    errors: tuple[ErrorInfo, ...] = ()
    finished_at: datetime | None = None
    reason: str | None = None
    workflow_id: WorkflowId | None = None
    depends_on: tuple[JobId, ...] = ()
    retry: RetryPolicy = DEFAULT_RETRY
    flow: FlowLimits | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    meta: Mapping[str, JSON] = field(default_factory=dict)
    progress: Progress | None = None
    key_scope: KeyScope = UNTIL_PRUNED


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """The job an enqueue request maps to: the job it stored (``created``), or the
    job holding its idempotency key (``created=False``), which the request left as it was."""

    job: JobRecord
    created: bool


@dataclass(frozen=True, slots=True)
class LeaseRef:
    """A lease held by a worker: the job and the fencing token it got at lease.

    In a heartbeat, ``progress`` is the latest progress its attempt reported since
    the last heartbeat (``None``: no news, the stored progress stays); it is stored
    only while the lease is live (:mod:`taskharbor.spec.metadata`).
    """

    job_id: JobId
    token: str
    progress: Progress | None = None

    def __post_init__(self) -> None:
        _check_lease(self.job_id, self.token)
        if self.progress is not None and type(self.progress) is not Progress:
            raise InvalidRequest(f"progress must be a Progress or None, not {self.progress!r}")


def _check_lease(job_id: JobId, token: str) -> None:
    _check_job_id(job_id)
    if not isinstance(token, str) or not token:
        raise InvalidRequest(f"lease token of job {job_id} must be a non-empty str")


@dataclass(frozen=True, slots=True)
class Completion:
    """The lease holder reports success with a JSON result."""

    job_id: JobId
    token: str
    result: JSON = None

    def __post_init__(self) -> None:
        _check_lease(self.job_id, self.token)
        if self.result is not None:  # the common case, without building the message
            check_json(self.result, f"result of job {self.job_id}")


@dataclass(frozen=True, slots=True)
class Failure:
    """The lease holder reports a failed attempt.

    ``retry_at`` is when to try again if the spec's guards choose ``retrying``
    (``None``: now).  ``permanent`` sends the job straight to ``dead``.
    """

    job_id: JobId
    token: str
    error: ErrorReport
    retry_at: datetime | None = None
    permanent: bool = False

    def __post_init__(self) -> None:
        _check_lease(self.job_id, self.token)
        if not isinstance(self.error, ErrorReport):
            raise InvalidRequest(f"error of job {self.job_id} must be an ErrorReport")
        if self.retry_at is not None:
            check_aware(self.retry_at, "retry_at")


@dataclass(frozen=True, slots=True)
class SnoozeRequest:
    """The lease holder asks to run the job again at ``run_at``; the attempt is given back."""

    job_id: JobId
    token: str
    run_at: datetime

    def __post_init__(self) -> None:
        _check_lease(self.job_id, self.token)
        check_aware(self.run_at, "run_at")


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """Heartbeat outcome: refused leases, and the leased jobs somebody asked to cancel."""

    lost: tuple[LeaseLost, ...]
    cancel_requested: frozenset[JobId]


@dataclass(frozen=True, slots=True)
class PromoteResult:
    """How many jobs were promoted, and when the next scheduled or retrying job is due."""

    promoted: int
    next_due: datetime | None


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step of a workflow graph, before it is stored.

    ``after`` holds indexes of earlier steps that must succeed before this one
    is released.  ``input`` says which results are put in front of ``args`` at
    release: a step index (that step's result) or a list of refs (a list of
    their values, in order); ``None`` puts nothing in front.  Every index in
    ``input`` must be in ``after``.
    """

    request: EnqueueRequest
    after: tuple[int, ...] = ()
    input: ResultRef | None = None
    partial: bool = False
    """A partial step (capability ``partial_chords``) waits until every step in
    ``after`` has *ended*, however it ended, and is released once; a step it waits
    for that ends dead or cancelled does not cancel it.  Its ``input`` (a list)
    gives, at release, :func:`partial_input`: the results of the steps that
    succeeded, and one :func:`member_failure` for each that did not (see
    "Partial steps" in spec/spi.py)."""


@dataclass(frozen=True, slots=True)
class WorkflowGraph:
    """A whole workflow: steps in topological order, and where its result comes from."""

    steps: tuple[StepSpec, ...]
    result: ResultRef
    name: str | None = None
    on_failure: EnqueueRequest | None = None
    """The failure callback: a job stored ``pending`` with the workflow, outside its
    steps, released with :func:`step_failure` in front of its args by the call in
    which the workflow becomes ``failed`` (see "Workflows" in spec/spi.py)."""
    idempotency_key: str | None = None
    """While a stored workflow holds this key, enqueueing a graph with the same key
    stores nothing and returns that workflow (capability ``workflow_idempotency``).
    Workflow keys and job keys are separate: a job's key never answers a graph."""

    def __post_init__(self) -> None:
        if not self.steps:
            raise InvalidRequest("a workflow needs at least one step")
        if self.on_failure is not None:
            if not isinstance(self.on_failure, EnqueueRequest):
                raise InvalidRequest("a workflow's on_failure must be an EnqueueRequest")
            if self.on_failure.idempotency_key is not None:
                raise InvalidRequest("a workflow's on_failure cannot carry an idempotency key")
        if self.idempotency_key is not None:
            check_name(self.idempotency_key, "workflow idempotency_key")
        for index, step in enumerate(self.steps):
            if not isinstance(step, StepSpec):
                raise InvalidRequest(f"workflow step {index} is not a StepSpec")
            if step.request.idempotency_key is not None:
                raise InvalidRequest(
                    f"workflow step {index}: idempotency keys are not supported on steps"
                )
            for dep in step.after:
                _check_int(dep, f"workflow step {index} dependency", 0, index - 1)
            if len(set(step.after)) != len(step.after):
                raise InvalidRequest(f"workflow step {index} lists a dependency twice")
            if step.input is not None and not step.after:
                raise InvalidRequest(f"workflow step {index} takes an input but waits for no step")
            if not isinstance(step.partial, bool):
                raise InvalidRequest(f"workflow step {index}: partial must be a bool")
            if step.partial and not step.after:
                raise InvalidRequest(f"workflow step {index} is partial but waits for no step")
            if step.partial and not isinstance(step.input, list | None):
                raise InvalidRequest(
                    f"workflow step {index} is partial: its input must be a list of refs"
                )
            if step.input is not None:
                missing = set(ref_indexes(step.input)) - set(step.after)
                if missing:
                    raise InvalidRequest(
                        f"workflow step {index} takes input from steps {sorted(missing)} "
                        "that it does not wait for"
                    )
        for ref in ref_indexes(self.result):
            _check_int(ref, "workflow result step", 0, len(self.steps) - 1)
        if self.name is not None:
            check_name(self.name, "workflow name")


def ref_indexes(ref: ResultRef) -> list[int]:
    """Every step index (or job id) a :data:`ResultRef` mentions, in order."""
    if isinstance(ref, bool) or not isinstance(ref, int | list):
        raise InvalidRequest(f"a result reference must be an int or a list, not {ref!r}")
    if isinstance(ref, int):
        return [ref]
    found: list[int] = []
    for item in ref:
        found.extend(ref_indexes(item))
    return found


def step_failure(workflow_id: WorkflowId, step: JobRecord) -> dict[str, JSON]:
    """What a failure callback receives in front of its args: the workflow, and the
    step that ended ``dead`` (its job id, task, attempt and last error)."""
    last = step.errors[-1] if step.errors else None
    return {
        "workflow_id": workflow_id,
        "job_id": step.id,
        "task": step.task,
        "attempt": step.attempt,
        "type": None if last is None else last.type,
        "message": None if last is None else last.message,
    }


def tolerated_steps(steps: Sequence[StepSpec]) -> frozenset[int]:
    """The indexes of the steps whose failure a partial step absorbs: a step with at
    least one dependent, each of which is partial or itself tolerated.

    A tolerated step that ends dead or cancelled does not fail or cancel its
    workflow (its path ends at a partial step, which hears about it); every other
    step counts when the workflow's state is derived.  A step nothing depends on
    is never tolerated, so a workflow ends only through steps that count.
    """
    dependents: dict[int, list[int]] = {index: [] for index in range(len(steps))}
    for index, step in enumerate(steps):
        for dep in step.after:
            dependents[dep].append(index)
    tolerated: set[int] = set()
    for index in reversed(range(len(steps))):
        after = dependents[index]
        if after and all(steps[d].partial or d in tolerated for d in after):
            tolerated.add(index)
    return frozenset(tolerated)


def member_failure(index: int, step: JobRecord) -> dict[str, JSON]:
    """What a partial step hears about one step of its input that did not succeed:
    its ``index`` (its place among the job ids its input names, flattened, in
    order: for a chord of jobs or chains, the member's position), its job id,
    task, end state, attempt, last error (type and message, or None) and
    ``reason`` (a cancelled step's, else None)."""
    last = step.errors[-1] if step.errors else None
    return {
        "index": index,
        "job_id": step.id,
        "task": step.task,
        "state": str(step.state.value),
        "attempt": step.attempt,
        "type": None if last is None else last.type,
        "message": None if last is None else last.message,
        "reason": step.reason,
    }


def partial_input(ref: list[ResultRef], steps: Mapping[int, JobRecord]) -> tuple[JSON, JSON]:
    """The two values a partial step gets in front of its args at release.

    First ``ref`` with each job id replaced by that job's result when it
    succeeded and left out of its list when it did not (nested lists stay, so
    a nested group keeps its place, holding its members that succeeded);
    second the :func:`member_failure` of each job that did not, in ``ref``'s
    order.  ``steps`` maps each job id ``ref`` names to its stored record.
    """
    failures: list[JSON] = []
    position = 0

    def resolve(item: ResultRef) -> tuple[bool, JSON]:
        nonlocal position
        if isinstance(item, int):
            step, position = steps[item], position + 1
            if step.state == JobState.SUCCEEDED:
                return True, step.result
            failures.append(member_failure(position - 1, step))
            return False, None
        values = [value for kept, value in map(resolve, item) if kept]
        return True, values

    return resolve(ref)[1], failures


def map_ref(ref: ResultRef, value_of: Mapping[int, JSON]) -> JSON:
    """Replace every index in ``ref`` by ``value_of[index]``; lists stay lists."""
    if isinstance(ref, int):
        return value_of[ref]
    return [map_ref(item, value_of) for item in ref]


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """A stored workflow: its state, its steps' job ids (graph order) and its result ref.

    ``result`` refers to job ids; resolve it with :func:`map_ref` over the
    steps' results once the workflow has succeeded.
    """

    id: WorkflowId
    state: WorkflowState
    steps: tuple[JobId, ...]
    result: ResultRef
    created_at: datetime
    finished_at: datetime | None = None
    name: str | None = None
    on_failure: JobId | None = None
    """The job id of the workflow's failure callback (not one of ``steps``), if any."""
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What ``list_jobs`` selects: every given field must match; ordered by id."""

    states: frozenset[JobState] | None = None
    task: str | None = None
    queue: str | None = None
    workflow_id: WorkflowId | None = None
    after_id: JobId | None = None
    limit: int = 100
    created_since: datetime | None = None
    """Only jobs created at or after this moment (``created_at >= created_since``,
    inclusive, so a job's own ``created_at`` selects it); timezone-aware."""
    before_id: JobId | None = None
    """Only jobs with a smaller id (the next page of a ``newest_first`` listing)."""
    newest_first: bool = False
    """Order by descending id, so ``limit`` keeps the newest matching jobs."""
    tag: str | None = None
    """Only jobs having this tag (``JobRecord.tags``); a store keeps an index for it."""

    def __post_init__(self) -> None:
        if self.tag is not None:
            check_tag(self.tag, "tag filter")
        if self.states is not None:
            for state in self.states:
                if not isinstance(state, JobState):
                    raise InvalidRequest(
                        f"unknown job state {state!r} "
                        f"(one of: {', '.join(s.value for s in JobState)})"
                    )
        _check_page(self.before_id, self.limit, self.newest_first)
        if self.created_since is not None:
            check_aware(self.created_since, "created_since")


@dataclass(frozen=True, slots=True)
class WorkflowFilter:
    """What ``list_workflows`` selects: every given field must match; ordered by id
    (descending with ``newest_first``), at most ``limit``."""

    states: frozenset[WorkflowState] | None = None
    name: str | None = None
    """Only workflows of this name (as given at enqueue; exact match)."""
    after_id: WorkflowId | None = None
    """Only workflows with a larger id."""
    before_id: WorkflowId | None = None
    """Only workflows with a smaller id."""
    limit: int = 100
    newest_first: bool = False
    """Order by descending id, so ``limit`` keeps the newest matching workflows."""

    def __post_init__(self) -> None:
        if self.states is not None:
            for state in self.states:
                if not isinstance(state, WorkflowState):
                    raise InvalidRequest(
                        f"unknown workflow state {state!r} "
                        f"(one of: {', '.join(s.value for s in WorkflowState)})"
                    )
        if self.name is not None:
            check_name(self.name, "workflow name")
        if self.after_id is not None:
            _check_job_id(self.after_id, "after_id")
        _check_page(self.before_id, self.limit, self.newest_first)


def _check_page(before_id: object, limit: object, newest_first: object) -> None:
    """The paging fields both filters share."""
    if before_id is not None:
        _check_job_id(before_id, "before_id")
    _check_int(limit, "limit", 1, 100_000)
    if not isinstance(newest_first, bool):
        raise InvalidRequest(f"newest_first must be a bool, not {newest_first!r}")


PRUNED_BY_DEFAULT: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.CANCELLED})
"""What ``Driver.prune`` deletes unless told otherwise (retention): never the dead-letter
queue, which stays until an operator requeues it or prunes ``dead`` explicitly."""

PRUNABLE_WORKFLOW_STATES: frozenset[WorkflowState] = frozenset(
    {WorkflowState.SUCCEEDED, WorkflowState.CANCELLED, WorkflowState.FAILED}
)
"""The workflow states in which a workflow may be pruned (with all its steps)."""


def check_prune_states(states: object) -> frozenset[JobState]:
    """A non-empty set of finished job states for ``Driver.prune``."""
    finished = {JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED}
    if not isinstance(states, set | frozenset | list | tuple) or not states:
        raise InvalidRequest(f"prune: states must be a non-empty set of job states, not {states!r}")
    for state in states:
        if not isinstance(state, JobState) or state not in finished:
            raise InvalidRequest(
                f"prune: only finished jobs can be pruned ({', '.join(sorted(finished))}), "
                f"not {state!r}"
            )
    return frozenset(states)


def job_ids(values: object, what: str, *, distinct: bool = True) -> tuple[JobId, ...]:
    """Validate a non-empty batch of job ids (each named once, unless not ``distinct``)."""
    if not isinstance(values, list | tuple) or not values:
        raise InvalidRequest(f"{what}: empty batch (give at least one job id)")
    for value in values:
        _check_job_id(value)
    if distinct:
        _check_distinct(values, what)
    return tuple(values)


def wait_timeout(value: object, what: str) -> float:
    """The ``timeout`` of a wait call (``wait_for_jobs``, ``wait_for_finished``) in
    seconds: a number, not NaN; a negative one counts as 0, ``math.inf`` waits forever."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{what}: timeout must be a number of seconds, not {value!r}")
    if math.isnan(value):
        raise InvalidRequest(f"{what}: timeout must be a number of seconds, not NaN")
    return max(0.0, float(value))


def distinct_names(
    values: object, what: str, noun: str, check: Callable[[object], object]
) -> tuple[str, ...]:
    """A non-empty batch of distinct names (a mutating batch names each thing once), each
    valid by ``check``; ``noun`` ("queue name", "worker id", ...) names one in messages."""
    if not isinstance(values, list | tuple) or not values:
        raise InvalidRequest(f"{what}: empty batch (give at least one {noun})")
    seen: set[object] = set()
    for value in values:
        check(value)
        if value in seen:
            raise InvalidRequest(f"{what}: {noun} {value!r} appears twice in one batch")
        seen.add(value)
    return tuple(values)


def check_batch(values: object, kind: type, what: str) -> None:
    """Validate a non-empty batch whose items are all ``kind``.

    Items with a ``job_id`` (fenced requests, lease refs) must name distinct jobs.
    """
    if not isinstance(values, list | tuple) or not values:
        raise InvalidRequest(f"{what}: empty batch (give at least one item)")
    for value in values:
        if not isinstance(value, kind):
            raise InvalidRequest(f"{what}: expected {kind.__name__}, got {type(value).__name__}")
    if hasattr(kind, "job_id"):
        _check_distinct([value.job_id for value in values], what)


def _check_distinct(ids: list[JobId] | tuple[JobId, ...], what: str) -> None:
    seen: set[JobId] = set()
    for job_id in ids:
        if job_id in seen:
            raise InvalidRequest(f"{what}: job {job_id} appears twice in one batch")
        seen.add(job_id)


@dataclass(frozen=True, slots=True)
class LeaseArgs:
    """The validated arguments of ``Driver.lease``: queue names once each, in order."""

    queues: tuple[str, ...]
    limit: int
    lease_seconds: float
    worker_id: str


def check_lease_args(
    queues: object, limit: object, lease_seconds: object, worker_id: object
) -> LeaseArgs:
    """Validate ``Driver.lease``'s arguments the same way in every driver."""
    names = check_queues(queues, "lease")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidRequest(f"lease: limit must be an int >= 1, not {limit!r}")
    seconds = check_lease_seconds(lease_seconds)
    check_name(worker_id, "worker id")
    return LeaseArgs(names, limit, seconds, str(worker_id))


def check_queues(queues: object, what: str) -> tuple[str, ...]:
    """A non-empty list or tuple of queue names, returned once each, in order."""
    if not isinstance(queues, list | tuple) or not queues:
        raise InvalidRequest(f"{what}: give a non-empty list of queue names, not {queues!r}")
    for queue in queues:
        check_name(queue, "queue name")
    return tuple(dict.fromkeys(queues))


def check_lease_seconds(value: object) -> float:
    """A lease duration: a positive finite number of seconds, at most
    :data:`MAX_DURATION_SECONDS`."""
    return check_seconds(value, "lease duration", positive=True)


__all__ = [
    "JSON",
    "Completion",
    "EnqueueRequest",
    "EnqueueResult",
    "ErrorInfo",
    "ErrorReport",
    "Failure",
    "HeartbeatResult",
    "JobFilter",
    "JobId",
    "JobRecord",
    "LeaseRef",
    "PromoteResult",
    "ResultRef",
    "SnoozeRequest",
    "StepSpec",
    "WorkflowFilter",
    "WorkflowGraph",
    "WorkflowId",
    "WorkflowRecord",
    "WorkflowState",
]
