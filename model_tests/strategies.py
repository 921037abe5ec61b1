"""Random inputs for the stateful harness.

Pools are deliberately tiny (two tasks, two queues, three idempotency keys,
three priorities) so that collisions, ties and competing jobs are the rule,
not the exception.  Times are offsets from the clock's now, chosen to land
before, on and after it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from hypothesis import strategies as st

from taskharbor.spec import (
    DEFAULT_RETRY,
    UNTIL_FINISHED,
    UNTIL_PRUNED,
    EnqueueRequest,
    ErrorReport,
    Failure,
    FlowLimits,
    JobState,
    KeyScope,
    LeaseRef,
    Progress,
    ResultRef,
    RetryPolicy,
    StepSpec,
    WorkflowGraph,
)
from taskharbor.spec.records import JSON, PRUNED_BY_DEFAULT

TASKS = ("alpha", "beta")
QUEUES = ("default", "mail")
WORKERS = ("worker-1", "worker-2")
IDEMPOTENCY_KEYS = ("key-a", "key-b", "key-c")
WORKFLOW_KEYS = ("order-a", "order-b")
WORKFLOW_NAMES = ("nightly", "report")
LEASE_SECONDS = (1.0, 5.0, 30.0)
SMALL_STEPS = (0.25, 1.0, 3.0)
LARGE_STEPS = (30.0, 600.0, 86_400.0)
PRUNE_HORIZONS = (-3_600.0, -5.0, 0.0, 10.0)
PRUNE_STATES = (
    PRUNED_BY_DEFAULT,
    frozenset({JobState.DEAD}),
    frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED}),
)
"""Retention's default, the dead-letter queue alone, and everything finished."""
"""``finished_before`` offsets from now, for prune: long ago up to a little ahead."""

RESULTS: st.SearchStrategy[JSON] = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.sampled_from(["ok", ""]),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["n", "s"]), st.integers(0, 3), max_size=2),
)
"""Step results: the JSON shapes a workflow step passes on to its dependents."""


def offset(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


def at(now: datetime, seconds: float | None) -> datetime | None:
    """``seconds`` after ``now``; None stays None (meaning "now" to the store)."""
    return None if seconds is None else offset(now, seconds)


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """An enqueue request with its ``run_at`` relative to a now not known yet.

    Strategies are built once and drawn from many times, so they cannot know
    the clock; a plan becomes a request at the moment it is sent.
    """

    task: str
    arg: int
    kwargs: dict[str, bool]
    queue: str
    priority: int
    delay: float | None
    max_attempts: int
    idempotency_key: str | None
    retry: RetryPolicy = DEFAULT_RETRY
    flow: FlowLimits | None = None

    @property
    def key_scope(self) -> KeyScope:
        """The key's scope (sent only with a key), chosen by the plan's argument: no draw
        of its own, so every other draw, and each hunt of the harness, stays as it was."""
        return KEY_SCOPES[self.arg % len(KEY_SCOPES)]

    def request(self, now: datetime) -> EnqueueRequest:
        # Tags and meta follow the drawn argument, as headers do, so that carrying
        # them costs the search no draws of its own.
        tags, meta = LABELS[self.arg // 2 % len(LABELS)]
        return EnqueueRequest(
            task=self.task,
            args=(self.arg,),
            kwargs=self.kwargs,
            queue=self.queue,
            priority=self.priority,
            run_at=at(now, self.delay),
            max_attempts=self.max_attempts,
            idempotency_key=self.idempotency_key,
            retry=self.retry,
            flow=self.flow,
            headers={"traceparent": f"t-{self.arg}"} if self.arg % 2 else {},
            tags=tags,
            meta=meta,
            key_scope=UNTIL_PRUNED if self.idempotency_key is None else self.key_scope,
        )


TAGS = ("red", "blue")
"""The tags jobs carry, and that ``list_jobs`` selects by (with one no job has)."""

LABELS: tuple[tuple[tuple[str, ...], dict[str, JSON]], ...] = (
    ((), {}),
    (("red",), {"n": 1}),
    (("blue", "red"), {}),
    (("blue",), {"note": "<b>&</b>", "list": [1.5, None]}),
)
"""Tags and meta a request can carry: none, one tag, two (one shared), markup in meta."""

PROGRESSES = (None, Progress(0.0), Progress(0.5, "half"), Progress(1.0, "done ✓"))
"""Progress a heartbeat can carry for a lease (None: none)."""


def progress_of(ref: LeaseRef, seconds: float) -> Progress | None:
    """The progress a heartbeat of ``seconds`` carries for ``ref``: it follows the drawn
    job and duration, so that it costs the search no draws of its own."""
    return PROGRESSES[(ref.job_id + LEASE_SECONDS.index(seconds)) % len(PROGRESSES)]


def tag_of(limit: int) -> str | None:
    """The tag a ``list_jobs`` of ``limit`` selects by: none, each of :data:`TAGS`, or a
    tag no job has; it follows the drawn limit (1 to 5)."""
    return (None, None, *TAGS, "green")[limit - 1]


def without_metadata(request: EnqueueRequest) -> EnqueueRequest:
    """``request`` without tags and meta, for a store without ``job_metadata``."""
    return replace(request, tags=(), meta={})


def graph_without_metadata(graph: WorkflowGraph) -> WorkflowGraph:
    """``graph`` whose steps and failure callback carry no tags or meta."""
    steps = tuple(replace(step, request=without_metadata(step.request)) for step in graph.steps)
    callback = None if graph.on_failure is None else without_metadata(graph.on_failure)
    return replace(graph, steps=steps, on_failure=callback)


RETRY_AT_ONCE = RetryPolicy("constant", base=0.0, jitter=False)
RETRY_POLICIES = (
    RETRY_AT_ONCE,
    RETRY_AT_ONCE,
    DEFAULT_RETRY,
    RetryPolicy("linear", base=1.5, cap=4.0, jitter=False),
    RetryPolicy("exponential", base=0.25, cap=30.0, factor=3.0, jitter=True),
)
"""Policies by which a rescue delays a job: mostly at once (so a rescued job is soon
leased again, where stale leases matter), else bounded or jittered."""


KEY_SCOPES = (
    UNTIL_PRUNED,
    UNTIL_PRUNED,
    UNTIL_FINISHED,
    KeyScope.window(1.0),
    KeyScope.window(30.0),
)
"""Key scopes: mostly the default; windows that the clock's small and large steps reach
exactly (four quarter seconds, one 30 s step), so a key is asked for on its boundary."""


def _request_plans(keys: st.SearchStrategy[str | None]) -> st.SearchStrategy[RequestPlan]:
    return st.builds(
        RequestPlan,
        task=st.sampled_from(TASKS),
        arg=st.integers(0, 9),
        kwargs=st.dictionaries(st.just("flag"), st.booleans()),
        queue=st.sampled_from(QUEUES),
        priority=st.integers(-1, 1),
        delay=st.one_of(st.none(), st.sampled_from([-10.0, 0.0, 2.0, 60.0])),
        max_attempts=st.integers(1, 3),
        idempotency_key=keys,
        retry=st.sampled_from(RETRY_POLICIES),
    )


REQUESTS = _request_plans(st.one_of(st.none(), st.sampled_from(IDEMPOTENCY_KEYS)))
"""Plans of single jobs: run_at in the past, now, soon or later; keys that collide."""

LEASED_QUEUES = st.lists(st.sampled_from(QUEUES), min_size=1, max_size=2, unique=True)
LEASE_LIMITS = st.integers(1, 3)


@dataclass(frozen=True, slots=True)
class FailurePlan:
    """A failure report with its ``retry_at`` relative to a now not known yet."""

    error: ErrorReport
    retry_delay: float | None
    permanent: bool

    def failure(self, lease: LeaseRef, now: datetime) -> Failure:
        return Failure(
            lease.job_id, lease.token, self.error, at(now, self.retry_delay), self.permanent
        )


FAILURES = st.builds(
    FailurePlan,
    error=st.builds(
        ErrorReport,
        type=st.sampled_from(["ValueError", "Timeout"]),
        message=st.sampled_from(["boom", ""]),
        traceback=st.one_of(st.none(), st.just("Traceback (most recent call last): ...")),
    ),
    retry_delay=st.one_of(st.none(), st.sampled_from([-1.0, 0.0, 1.0, 45.0])),
    permanent=st.booleans(),
)

SNOOZE_DELAYS = st.sampled_from([0.0, 0.5, 20.0])


# -- workflows -------------------------------------------------------------------
#
# A workflow is drawn as a small tree of shapes (task, chain, group, chord) and
# then flattened into the WorkflowGraph a driver stores, wiring each step's
# ``after`` and ``input`` the way chains, groups and chords do.


@dataclass(frozen=True, slots=True)
class Task:
    plan: RequestPlan


@dataclass(frozen=True, slots=True)
class Chain:
    """Parts one after the other; ``pass_results`` feeds each part the previous result."""

    parts: tuple[Shape, ...]
    pass_results: bool


@dataclass(frozen=True, slots=True)
class Group:
    """Parts side by side; the result is the list of their results."""

    parts: tuple[Shape, ...]


@dataclass(frozen=True, slots=True)
class Chord:
    """A group whose results, as a list, feed one callback."""

    header: tuple[Shape, ...]
    callback: Shape
    partial: bool = False
    """The callback runs over the members that succeeded (``StepSpec.partial``)."""


Shape = Task | Chain | Group | Chord


class _GraphBuilder:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self.steps: list[StepSpec] = []

    def add(
        self,
        shape: Shape,
        after: tuple[int, ...],
        input: ResultRef | None,
        partial: bool = False,
    ) -> tuple[ResultRef, tuple[int, ...]]:
        """Append ``shape``'s steps; return its result ref and its last steps.

        Every index of the result ref is one of the last steps, so a part
        that takes this result as input can wait for exactly those steps.
        ``partial`` makes the steps that wait on ``after`` partial ones.
        """
        if isinstance(shape, Task):
            index = len(self.steps)
            request = shape.plan.request(self.now)
            self.steps.append(StepSpec(request, after=after, input=input, partial=partial))
            return index, (index,)
        if isinstance(shape, Chain):
            result, last = self.add(shape.parts[0], after, input, partial)
            for part in shape.parts[1:]:
                result, last = self.add(part, last, result if shape.pass_results else None)
            return result, last
        if isinstance(shape, Group):
            return self._side_by_side(shape.parts, after, input, partial)
        header, last = self._side_by_side(shape.header, after, input, partial)
        return self.add(shape.callback, last, header, shape.partial)

    def _side_by_side(
        self,
        parts: tuple[Shape, ...],
        after: tuple[int, ...],
        input: ResultRef | None,
        partial: bool,
    ) -> tuple[ResultRef, tuple[int, ...]]:
        results: list[ResultRef] = []
        last: list[int] = []
        for part in parts:
            result, part_last = self.add(part, after, input, partial)
            results.append(result)
            last.extend(part_last)
        return results, tuple(last)


@dataclass(frozen=True, slots=True)
class WorkflowPlan:
    """A workflow shape, name, failure callback and idempotency key; it becomes a
    graph at the moment it is sent."""

    shape: Shape
    name: str | None
    on_failure: RequestPlan | None = None
    key: str | None = None

    def graph(self, now: datetime) -> WorkflowGraph:
        builder = _GraphBuilder(now)
        result, _ = builder.add(self.shape, (), None)
        callback = None if self.on_failure is None else self.on_failure.request(now)
        return WorkflowGraph(
            tuple(builder.steps), result, self.name, on_failure=callback, idempotency_key=self.key
        )


def _nest(children: st.SearchStrategy[Shape]) -> st.SearchStrategy[Shape]:
    parts = st.lists(children, min_size=2, max_size=3).map(tuple)
    return st.one_of(
        st.builds(Chain, parts, st.booleans()),
        st.builds(Group, parts),
        st.builds(
            Chord, st.lists(children, min_size=1, max_size=3).map(tuple), children, st.booleans()
        ),
    )


_STEP_TASKS: st.SearchStrategy[Shape] = _request_plans(st.none()).map(Task)

_FLAT_CHORDS: st.SearchStrategy[Shape] = st.builds(
    Chord, st.lists(_STEP_TASKS, min_size=2, max_size=3).map(tuple), _STEP_TASKS, st.booleans()
)
"""The plain chord (two or three members, one callback, half of them partial), drawn
often on purpose: its callback's single release is the hardest workflow rule to get
right."""

WORKFLOWS = st.builds(
    WorkflowPlan,
    st.one_of(st.recursive(_STEP_TASKS, _nest, max_leaves=5), _FLAT_CHORDS),
    st.one_of(st.none(), st.sampled_from(WORKFLOW_NAMES)),
    st.one_of(st.none(), _request_plans(st.none())),
    st.one_of(st.none(), st.sampled_from(WORKFLOW_KEYS)),
)
"""Small nested chains, groups and chords (at most five steps), half of them with a
failure callback; steps and callbacks carry no keys, some workflows do (from a pool
of two, so that repeats and keys freed by prune come up)."""
