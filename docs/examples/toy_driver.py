"""A complete TaskHarbor driver in one file: the whole store is one JSON document.

This is the toy driver of docs/drivers.md.  It implements every method of
:class:`taskharbor.spec.Driver`, workflows included, imports nothing of
TaskHarbor's but ``taskharbor.spec``, and passes ``taskharbor.conformance``
and ``taskharbor.model_tests`` (tests/test_docs_drivers.py runs both).

How it keeps the rules that hold for every SPI method (spec/spi.py):

* **Atomic.**  A call is one read-modify-write of the file under a lock: a
  thread lock for this process, ``flock`` on a side file for the others.  The
  call works on objects loaded from the file and writes them back (a
  temporary file, then ``os.replace``) only when it returns, so a call that
  raises writes nothing and a crash leaves either the old file or the new one.
* **Validated.**  Arguments are checked with the helpers of
  ``taskharbor.spec.records`` before anything is touched; an unknown job id
  raises ``JobNotFound`` before any item of the batch is applied.
* **Fenced.**  ``heartbeat``, ``complete``, ``fail`` and ``snooze`` apply to
  an item only while the job is ``running`` with the item's token; an item
  whose job is gone (pruned) is reported as ``LeaseLost.missing``.
* **Through the table.**  Every state change asks ``JOB.resolve`` with the
  job's guard facts (:func:`_facts`), and a workflow's new state is checked
  with ``WORKFLOW.event_for``.
* **Injected time.**  ``now`` is read from ``self.clock`` once per call.

What it does not try to be is fast: every call reads and rewrites the whole
store, so its cost grows with the number of stored jobs, and calls from every
process run one at a time.  Fine for a demo, a test or a few thousand jobs;
use the SQLite or PostgreSQL driver for real work.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    FINISHED_JOB_STATES,
    JOB,
    JSON,
    WORKFLOW,
    WORKFLOW_CANCELLED,
    Capabilities,
    Clock,
    Completion,
    Driver,
    EnqueueRequest,
    EnqueueResult,
    ErrorInfo,
    ErrorReport,
    Failure,
    HeartbeatResult,
    InvalidRequest,
    InvalidTransition,
    JobEvent,
    JobFilter,
    JobId,
    JobNotFound,
    JobRecord,
    JobState,
    KeyHold,
    KeyScope,
    LeaseLost,
    LeaseRef,
    PromoteResult,
    ResultRef,
    RetryPolicy,
    SchemaError,
    SnoozeRequest,
    SystemClock,
    WorkflowFilter,
    WorkflowGraph,
    WorkflowId,
    WorkflowNotFound,
    WorkflowRecord,
    WorkflowState,
    dependency_reason,
    derive_workflow_state,
    retry_delay,
)
from taskharbor.spec.records import (
    LEASE_EXPIRED_MESSAGE,
    LEASE_EXPIRED_TYPE,
    PRUNABLE_WORKFLOW_STATES,
    PRUNED_BY_DEFAULT,
    check_aware,
    check_batch,
    check_lease_args,
    check_lease_seconds,
    check_prune_states,
    check_workflow_id,
    job_ids,
    map_ref,
)
from taskharbor.spec.table import NEW, QUEUED_JOB_STATES

FORMAT = 1
"""The version of the file's layout; ``migrate`` refuses a file with another one."""


# -- the store as one call sees it ---------------------------------------------


@dataclass(frozen=True)
class _Step:
    """What a workflow step was enqueued with: needed again at release and at requeue."""

    args: tuple[JSON, ...]
    input: ResultRef | None


@dataclass
class _Store:
    """The whole store, loaded from the file at the start of a call.

    The call changes these objects freely; they are written back only if the
    call returns, which is what makes every call all-or-nothing.
    """

    now: datetime
    """The call's "now": read from the clock once, when the call starts.  Not saved."""
    jobs: dict[JobId, JobRecord] = field(default_factory=dict)
    workflows: dict[WorkflowId, WorkflowRecord] = field(default_factory=dict)
    steps: dict[JobId, _Step] = field(default_factory=dict)
    next_job_id: int = 1
    next_workflow_id: int = 1

    def find(self, ids: Sequence[JobId]) -> list[JobRecord]:
        """The jobs, in the order asked; ``JobNotFound`` names the first missing id."""
        for job_id in ids:
            if job_id not in self.jobs:
                raise JobNotFound(job_id)
        return [self.jobs[job_id] for job_id in ids]


# -- the file: JSON in, JSON out -----------------------------------------------


def _to_json(value: object) -> str:
    """``json.dumps`` hook: the records' only non-JSON values are datetimes."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in the JSON file")


def _time(text: str | None) -> datetime | None:
    """An optional stored time (``None`` stays ``None``)."""
    return None if text is None else datetime.fromisoformat(text)


def _job_from_json(data: dict[str, Any]) -> JobRecord:
    """A stored job: JSON gave lists for tuples and strings for states and times."""
    return JobRecord(
        **{
            **data,
            "state": JobState(data["state"]),
            "args": tuple(data["args"]),
            "run_at": datetime.fromisoformat(data["run_at"]),
            "created_at": datetime.fromisoformat(data["created_at"]),
            "lease_expires_at": _time(data["lease_expires_at"]),
            "finished_at": _time(data["finished_at"]),
            "errors": tuple(
                ErrorInfo(**{**error, "at": datetime.fromisoformat(error["at"])})
                for error in data["errors"]
            ),
            "depends_on": tuple(data["depends_on"]),
            "retry": RetryPolicy(**data.get("retry", {})),  # files older than policies: default
            "tags": tuple(data.get("tags", ())),  # not declared (job_metadata): always none
            "progress": None,
            "key_scope": _key_scope(data.get("key_scope")),
        }
    )


def _key_scope(data: dict[str, Any] | None) -> KeyScope:
    """A stored key scope (files older than scopes: the default, until pruned)."""
    return KeyScope() if data is None else KeyScope(KeyHold(data["hold"]), data["seconds"])


def _workflow_from_json(data: dict[str, Any]) -> WorkflowRecord:
    return WorkflowRecord(
        **{
            **data,
            "state": WorkflowState(data["state"]),
            "steps": tuple(data["steps"]),
            "created_at": datetime.fromisoformat(data["created_at"]),
            "finished_at": _time(data["finished_at"]),
        }
    )


def _encode(store: _Store) -> dict[str, Any]:
    """The file's content: records as dicts (``json.dumps`` writes tuples as lists)."""
    return {
        "format": FORMAT,
        "next_job_id": store.next_job_id,
        "next_workflow_id": store.next_workflow_id,
        "jobs": [dataclasses.asdict(job) for job in store.jobs.values()],
        "workflows": [dataclasses.asdict(wf) for wf in store.workflows.values()],
        "steps": {str(job_id): dataclasses.asdict(step) for job_id, step in store.steps.items()},
    }


def _decode(document: dict[str, Any], now: datetime) -> _Store:
    jobs = (_job_from_json(data) for data in document["jobs"])
    workflows = (_workflow_from_json(data) for data in document["workflows"])
    return _Store(
        now=now,
        jobs={job.id: job for job in jobs},
        workflows={workflow.id: workflow for workflow in workflows},
        steps={
            int(job_id): _Step(tuple(step["args"]), step["input"])
            for job_id, step in document["steps"].items()
        },
        next_job_id=document["next_job_id"],
        next_workflow_id=document["next_workflow_id"],
    )


# -- state changes: always through the table -----------------------------------


def _facts(store: _Store, job: JobRecord, *, permanent: bool = False) -> dict[str, bool]:
    """The job's guard facts (``JOB_GUARDS`` names), evaluated on the stored job."""
    return {
        "waits_on_dependencies": any(
            store.jobs[dep].state != JobState.SUCCEEDED for dep in job.depends_on
        ),
        "run_at_in_future": job.run_at > store.now,
        "cancel_requested": job.cancel_requested,
        "permanent": permanent,
        "attempts_exhausted": job.attempt >= job.max_attempts,
    }


def _target(store: _Store, job: JobRecord, event: JobEvent, *, permanent: bool = False) -> JobState:
    """Where ``event`` takes ``job``; ``InvalidTransition`` if the table does not allow it."""
    facts = _facts(store, job, permanent=permanent)
    return JobState(JOB.resolve(event, job.state, facts, subject=job.id))


def _enter(store: _Store, job: JobRecord, target: JobState, **changes: Any) -> JobRecord:
    """Store ``job`` in ``target`` with the field effects every event shares, then ``changes``.

    Entering a finished state from an unfinished one sets ``finished_at`` (a dead
    job cancelled keeps the one it died at); entering ``cancelled`` sets
    a reason (the one a workflow's cancel recorded on a running step, else by
    request, unless ``changes`` names another); leaving ``running`` clears the
    lease fields, ``cancel_requested`` and any reason recorded.
    """
    shared: dict[str, Any] = {}
    if target in FINISHED_JOB_STATES and job.state not in FINISHED_JOB_STATES:
        shared["finished_at"] = store.now
    if job.state == JobState.RUNNING and target != JobState.RUNNING:
        shared.update(lease_token=None, lease_expires_at=None, leased_by=None)
        shared.update(cancel_requested=False, reason=None)
    if target == JobState.CANCELLED:
        shared["reason"] = job.reason or CANCELLED_BY_REQUEST
    moved = replace(job, state=target, **{**shared, **changes})
    store.jobs[job.id] = moved
    return moved


def _new_job(
    store: _Store,
    request: EnqueueRequest,
    *,
    workflow_id: WorkflowId | None = None,
    depends_on: tuple[JobId, ...] = (),
) -> JobRecord:
    """Event ``enqueue``: a job comes from the lifecycle's ``new`` state."""
    run_at = store.now if request.run_at is None else request.run_at.astimezone(UTC)
    facts = {"waits_on_dependencies": bool(depends_on), "run_at_in_future": run_at > store.now}
    job = JobRecord(
        id=store.next_job_id,
        task=request.task,
        queue=request.queue,
        state=JobState(JOB.resolve(JobEvent.ENQUEUE, NEW, facts)),
        args=request.args,
        kwargs=dict(request.kwargs),
        priority=request.priority,
        run_at=run_at,
        attempt=0,
        max_attempts=request.max_attempts,
        created_at=store.now,
        idempotency_key=request.idempotency_key,
        workflow_id=workflow_id,
        depends_on=depends_on,
        retry=request.retry,
        headers=dict(request.headers),
    )
    store.next_job_id += 1
    store.jobs[job.id] = job
    return job


def _error(store: _Store, job: JobRecord, report: ErrorReport) -> tuple[ErrorInfo, ...]:
    """The job's errors with ``report`` appended, for the attempt that just ended."""
    info = ErrorInfo(job.attempt, store.now, report.type, report.message, report.traceback)
    return (*job.errors, info)


# -- workflows -----------------------------------------------------------------


def _args_with_input(store: _Store, job: JobRecord) -> tuple[JSON, ...]:
    """A step's own args with its input (resolved from stored results) put in front."""
    step = store.steps[job.id]
    if step.input is None:
        return step.args
    results = {dep: store.jobs[dep].result for dep in job.depends_on}
    return (map_ref(step.input, results), *step.args)


def _by_job_id(ref: ResultRef, ids: Sequence[JobId]) -> ResultRef:
    """A ref to step indexes rewritten as a ref to those steps' job ids."""
    result: ResultRef = map_ref(ref, dict(enumerate(ids)))
    return result


def _after_change(store: _Store, job: JobRecord) -> None:
    """What a step entering a finished state does to its workflow, in the same call.

    Success releases each pending step whose dependencies have all succeeded;
    ``dead`` or ``cancelled`` cancels every pending step that depends on it,
    directly or not.  Then the workflow's state is derived from its steps.
    """
    if job.workflow_id is None or job.state not in FINISHED_JOB_STATES:
        return
    steps = store.workflows[job.workflow_id].steps
    if job.state == JobState.SUCCEEDED:
        for step_id in steps:
            step = store.jobs[step_id]
            needs_it = step.state == JobState.PENDING and job.id in step.depends_on
            if needs_it and not _facts(store, step)["waits_on_dependencies"]:
                _release(store, step)
    else:
        # Steps are stored in topological order, so one pass sees a dependency
        # before the steps that need it.
        reached = {job.id}
        for step_id in steps:
            step = store.jobs[step_id]
            if reached.isdisjoint(step.depends_on):
                continue
            reached.add(step_id)
            if step.state == JobState.PENDING:
                reason = dependency_reason(job.id, job.state)
                _enter(store, step, _target(store, step, JobEvent.CANCEL), reason=reason)
    _derive_workflow(store, job.workflow_id)


def _release(store: _Store, step: JobRecord) -> None:
    """Event ``release``: a future ``run_at`` is kept (``scheduled``), else it becomes now."""
    target = _target(store, step, JobEvent.RELEASE)
    run_at = step.run_at if target == JobState.SCHEDULED else store.now
    _enter(store, step, target, run_at=run_at, args=_args_with_input(store, step))


def _derive_workflow(store: _Store, workflow_id: WorkflowId) -> None:
    """Set the workflow's state from its steps' states and its own (spec/spi.py, "Workflows")."""
    workflow = store.workflows[workflow_id]
    steps = (store.jobs[step_id].state for step_id in workflow.steps)
    target = derive_workflow_state(steps, workflow.state)
    if target == workflow.state:
        return
    WORKFLOW.event_for(workflow.state, target, subject=workflow_id)  # raises if no such change
    finished_at = None if target == WorkflowState.RUNNING else store.now
    store.workflows[workflow_id] = replace(workflow, state=target, finished_at=finished_at)


def _requeue(store: _Store, job: JobRecord) -> None:
    """Event ``requeue``: back to the queue with a fresh attempt counter, errors kept."""
    target = _target(store, job, JobEvent.REQUEUE)
    changes: dict[str, Any] = {
        "attempt": 0,
        "run_at": store.now,
        "cancel_requested": False,
        "finished_at": None,
        "reason": None,
        "result": None,
    }
    if job.id in store.steps:
        own = store.steps[job.id].args
        changes["args"] = _args_with_input(store, job) if target == JobState.AVAILABLE else own
    _enter(store, job, target, **changes)


# -- fencing -------------------------------------------------------------------


class _Fenced(Protocol):
    """A request only the lease holder may make: it names the job and its lease token."""

    @property
    def job_id(self) -> JobId: ...

    @property
    def token(self) -> str: ...


Item = TypeVar("Item", bound=_Fenced)


def _fenced(
    store: _Store, items: Sequence[Item], apply: Callable[[JobRecord, Item], JobRecord]
) -> list[LeaseLost]:
    """Apply each item whose lease is live, in order; report the others, applying the rest."""
    lost = []
    for item in items:
        job = store.jobs.get(item.job_id)
        if job is None:  # pruned while its worker held it: a lost lease, not an error
            lost.append(LeaseLost.missing(item.job_id, item.token))
        elif job.state == JobState.RUNNING and job.lease_token == item.token:
            _after_change(store, apply(job, item))
        else:
            lost.append(LeaseLost.stale(job.id, item.token, job.state))
    return lost


# -- the driver ----------------------------------------------------------------


class JsonFileDriver(Driver):
    """A store kept in one JSON file at ``path``; ``migrate()`` creates the file."""

    capabilities = Capabilities(persistent=True, multi_process=True)

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.clock = clock or SystemClock()
        self._thread_lock = threading.Lock()

    # -- one call, one transaction -------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive use of the file: among this process's threads, then among processes."""
        lock_file = self.path.with_name(self.path.name + ".lock")
        with self._thread_lock, open(lock_file, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            yield

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[_Store]:
        """The store for one call; saved only if the call returns (and ``write``)."""
        with self._locked():
            store = _decode(self._read(), self.clock.now().astimezone(UTC))
            yield store
            if write:
                self._write(_encode(store))

    def _read(self) -> dict[str, Any]:
        """The file's content, once it is known to be a store of this driver's format."""
        try:
            with open(self.path, encoding="utf-8") as file:
                document = json.load(file)
        except FileNotFoundError:
            raise SchemaError(f"no store at {self.path}: call migrate() first") from None
        except json.JSONDecodeError as error:
            raise SchemaError(f"{self.path} is not a JSON store ({error})") from None
        found = document.get("format") if isinstance(document, dict) else None
        if found != FORMAT:
            raise SchemaError(f"{self.path} has format {found!r}; this driver reads {FORMAT}")
        result: dict[str, Any] = document
        return result

    def _write(self, document: dict[str, Any]) -> None:
        """Replace the file whole: readers see the old store or the new one, never half."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(document, file, default=_to_json, ensure_ascii=False)
            file.flush()
            os.fsync(file.fileno())  # on disk before it takes the store's name
        os.replace(temporary, self.path)

    # -- lifecycle of the store -------------------------------------------------

    def migrate(self) -> None:
        """Create an empty store if there is none; check the format of one that exists."""
        with self._locked():
            if self.path.exists():
                self._read()
            else:
                self._write(_encode(_Store(now=self.clock.now())))

    # -- producing --------------------------------------------------------------

    def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[EnqueueResult]:
        """Event ``enqueue`` per request, unless a stored job holds its idempotency key."""
        check_batch(requests, EnqueueRequest, "enqueue")
        with self._transaction() as store:
            results = []
            for request in requests:
                key = request.idempotency_key
                holder = next(
                    (job for job in store.jobs.values() if key and job.idempotency_key == key),
                    None,
                )
                if holder is None:
                    results.append(EnqueueResult(_new_job(store, request), created=True))
                else:
                    results.append(EnqueueResult(holder, created=False))
            return results

    def enqueue_workflow(self, graph: WorkflowGraph) -> WorkflowRecord:
        """Every step at once, in step order; steps with dependencies start ``pending``."""
        if not isinstance(graph, WorkflowGraph):
            raise InvalidRequest(f"enqueue_workflow needs a WorkflowGraph, not {graph!r}")
        with self._transaction() as store:
            workflow_id = store.next_workflow_id
            store.next_workflow_id += 1
            ids: list[JobId] = []
            for step in graph.steps:
                depends_on = tuple(ids[index] for index in step.after)
                job = _new_job(store, step.request, workflow_id=workflow_id, depends_on=depends_on)
                ids.append(job.id)
                step_input = None if step.input is None else _by_job_id(step.input, ids)
                store.steps[job.id] = _Step(step.request.args, step_input)
            workflow = WorkflowRecord(
                id=workflow_id,
                state=WorkflowState.RUNNING,
                steps=tuple(ids),
                result=_by_job_id(graph.result, ids),
                created_at=store.now,
                name=graph.name,
            )
            store.workflows[workflow_id] = workflow
            return workflow

    # -- consuming ----------------------------------------------------------------

    def lease(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker_id: str,
    ) -> list[JobRecord]:
        """Event ``lease`` for the first ``limit`` available jobs, in the SPI's order."""
        args = check_lease_args(queues, limit, lease_seconds, worker_id)
        with self._transaction() as store:
            ready = [
                job
                for job in store.jobs.values()
                if job.state == JobState.AVAILABLE and job.queue in args.queues
            ]
            ready.sort(key=lambda job: (-job.priority, job.run_at, job.id))
            return [
                _enter(
                    store,
                    job,
                    _target(store, job, JobEvent.LEASE),
                    attempt=job.attempt + 1,
                    lease_token=secrets.token_urlsafe(16),
                    lease_expires_at=store.now + timedelta(seconds=args.lease_seconds),
                    leased_by=args.worker_id,
                )
                for job in ready[: args.limit]
            ]

    def heartbeat(self, leases: Sequence[LeaseRef], lease_seconds: float) -> HeartbeatResult:
        """Event ``heartbeat`` for every live lease; the others are reported lost."""
        check_batch(leases, LeaseRef, "heartbeat")
        seconds = check_lease_seconds(lease_seconds)
        with self._transaction() as store:
            lost = []
            cancel_requested = set()
            for ref in leases:
                job = store.jobs.get(ref.job_id)
                if job is None:
                    lost.append(LeaseLost.missing(ref.job_id, ref.token))
                    continue
                if job.state != JobState.RUNNING or job.lease_token != ref.token:
                    lost.append(LeaseLost.stale(job.id, ref.token, job.state))
                    continue
                expires = store.now + timedelta(seconds=seconds)
                _enter(
                    store, job, _target(store, job, JobEvent.HEARTBEAT), lease_expires_at=expires
                )
                if job.cancel_requested:
                    cancel_requested.add(job.id)
            return HeartbeatResult(tuple(lost), frozenset(cancel_requested))

    def complete(self, completions: Sequence[Completion]) -> list[LeaseLost]:
        """Event ``succeed``; a workflow step's success may release its dependents."""
        check_batch(completions, Completion, "complete")
        with self._transaction() as store:

            def succeed(job: JobRecord, item: Completion) -> JobRecord:
                target = _target(store, job, JobEvent.SUCCEED)
                return _enter(store, job, target, result=item.result)

            return _fenced(store, completions, succeed)

    def fail(self, failures: Sequence[Failure]) -> list[LeaseLost]:
        """Event ``fail``: the guards choose ``cancelled``, ``dead`` or ``retrying``."""
        check_batch(failures, Failure, "fail")
        with self._transaction() as store:

            def fail_one(job: JobRecord, item: Failure) -> JobRecord:
                target = _target(store, job, JobEvent.FAIL, permanent=item.permanent)
                changes: dict[str, Any] = {"errors": _error(store, job, item.error)}
                if target == JobState.RETRYING:
                    retry_at = item.retry_at
                    changes["run_at"] = store.now if retry_at is None else retry_at.astimezone(UTC)
                return _enter(store, job, target, **changes)

            return _fenced(store, failures, fail_one)

    def snooze(self, requests: Sequence[SnoozeRequest]) -> list[LeaseLost]:
        """Event ``snooze``: the attempt is given back; ``cancelled`` if cancel was asked."""
        check_batch(requests, SnoozeRequest, "snooze")
        with self._transaction() as store:

            def snooze_one(job: JobRecord, item: SnoozeRequest) -> JobRecord:
                target = _target(store, job, JobEvent.SNOOZE)
                changes: dict[str, Any] = {"attempt": job.attempt - 1}
                if target == JobState.SCHEDULED:
                    changes["run_at"] = item.run_at.astimezone(UTC)
                return _enter(store, job, target, **changes)

            return _fenced(store, requests, snooze_one)

    # -- operators ----------------------------------------------------------------

    def cancel(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        """Event ``cancel``; a running job is only asked to stop (``cancel_requested``)."""
        ids = job_ids(job_ids_, "cancel")
        with self._transaction() as store:
            states_before = [job.state for job in store.find(ids)]
            for job_id, state_before in zip(ids, states_before, strict=True):
                job = store.jobs[job_id]
                if job.state != state_before:
                    continue  # an earlier item's workflow cascade cancelled it already
                if job.state == JobState.RUNNING:
                    store.jobs[job_id] = replace(job, cancel_requested=True)
                else:
                    _after_change(store, _enter(store, job, _target(store, job, JobEvent.CANCEL)))
            return store.find(ids)

    def requeue(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        """Event ``requeue`` for dead or cancelled jobs, and every cancelled step of their
        workflows."""
        ids = job_ids(job_ids_, "requeue")
        with self._transaction() as store:
            states_before = [job.state for job in store.find(ids)]
            for job_id, state_before in zip(ids, states_before, strict=True):
                job = store.jobs[job_id]
                if job.state != state_before:
                    continue  # an earlier item requeued its whole workflow already
                _requeue(store, job)
                if job.workflow_id is not None:
                    for step_id in store.workflows[job.workflow_id].steps:
                        if store.jobs[step_id].state == JobState.CANCELLED:
                            _requeue(store, store.jobs[step_id])
                    _derive_workflow(store, job.workflow_id)
            return store.find(ids)

    # -- maintenance ----------------------------------------------------------------

    def promote(self) -> PromoteResult:
        """Event ``promote`` for every due job among the states it applies to."""
        waiting = JOB.sources(JobEvent.PROMOTE)  # scheduled and retrying
        with self._transaction() as store:
            promoted = 0
            for job in list(store.jobs.values()):
                if job.state in waiting and job.run_at <= store.now:
                    _enter(store, job, _target(store, job, JobEvent.PROMOTE))
                    promoted += 1
            later = [job.run_at for job in store.jobs.values() if job.state in waiting]
            return PromoteResult(promoted, min(later, default=None))

    def rescue(self) -> list[JobId]:
        """Event ``lease_expired`` for every running job whose lease ran out."""
        expired_error = ErrorReport(LEASE_EXPIRED_TYPE, LEASE_EXPIRED_MESSAGE)
        with self._transaction() as store:
            rescued = []
            for job_id in sorted(store.jobs):
                job = store.jobs[job_id]
                expires = job.lease_expires_at
                if job.state != JobState.RUNNING or expires is None or expires > store.now:
                    continue
                target = _target(store, job, JobEvent.LEASE_EXPIRED)
                changes: dict[str, Any] = {"errors": _error(store, job, expired_error)}
                if target == JobState.RETRYING:  # a failed attempt: its policy's delay
                    changes["run_at"] = store.now + retry_delay(job.retry, job.id, job.attempt)
                _after_change(store, _enter(store, job, target, **changes))
                rescued.append(job_id)
            return rescued

    def prune(
        self,
        finished_before: datetime,
        states: Collection[JobState] = PRUNED_BY_DEFAULT,
        *,
        dry_run: bool = False,
    ) -> int:
        """Delete old finished jobs in ``states``; a workflow's steps only with the whole
        (finished) workflow.  A dry run counts them and deletes nothing."""
        check_aware(finished_before, "finished_before")
        pruned = check_prune_states(states)
        horizon = finished_before.astimezone(UTC)

        def old(job: JobRecord) -> bool:
            finished_at = job.finished_at
            return job.state in pruned and finished_at is not None and finished_at < horizon

        with self._transaction() as store:
            doomed = [job.id for job in store.jobs.values() if job.workflow_id is None and old(job)]
            for workflow in list(store.workflows.values()):
                steps = [store.jobs[step_id] for step_id in workflow.steps]
                if workflow.state in PRUNABLE_WORKFLOW_STATES and all(map(old, steps)):
                    doomed.extend(workflow.steps)
                    if not dry_run:
                        del store.workflows[workflow.id]
            if dry_run:
                return len(doomed)
            for job_id in doomed:
                del store.jobs[job_id]
                store.steps.pop(job_id, None)
            return len(doomed)

    # -- reading ----------------------------------------------------------------------

    def get(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        ids = job_ids(job_ids_, "get", distinct=False)
        with self._transaction(write=False) as store:
            return store.find(ids)

    def list_jobs(self, where: JobFilter) -> list[JobRecord]:
        if not isinstance(where, JobFilter):
            raise InvalidRequest(f"list_jobs needs a JobFilter, not {where!r}")

        def matches(job: JobRecord) -> bool:
            return (
                (where.states is None or job.state in where.states)
                and (where.task is None or job.task == where.task)
                and (where.queue is None or job.queue == where.queue)
                and (where.workflow_id is None or job.workflow_id == where.workflow_id)
                and (where.after_id is None or job.id > where.after_id)
                and (where.before_id is None or job.id < where.before_id)
                and (where.created_since is None or job.created_at >= where.created_since)
            )

        with self._transaction(write=False) as store:
            selected = sorted(filter(matches, store.jobs.values()), key=lambda job: job.id)
            return (selected[::-1] if where.newest_first else selected)[: where.limit]

    def count(self) -> Mapping[tuple[str, JobState], int]:
        with self._transaction(write=False) as store:
            return dict(Counter((job.queue, job.state) for job in store.jobs.values()))

    def get_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        check_workflow_id(workflow_id)
        with self._transaction(write=False) as store:
            if workflow_id not in store.workflows:
                raise WorkflowNotFound(workflow_id)
            return store.workflows[workflow_id]

    def list_workflows(self, where: WorkflowFilter) -> list[WorkflowRecord]:
        if not isinstance(where, WorkflowFilter):
            raise InvalidRequest(f"list_workflows needs a WorkflowFilter, not {where!r}")

        def matches(workflow: WorkflowRecord) -> bool:
            return (
                (where.states is None or workflow.state in where.states)
                and (where.name is None or workflow.name == where.name)
                and (where.after_id is None or workflow.id > where.after_id)
                and (where.before_id is None or workflow.id < where.before_id)
            )

        with self._transaction(write=False) as store:
            found = sorted(filter(matches, store.workflows.values()), key=lambda wf: wf.id)
            return (found[::-1] if where.newest_first else found)[: where.limit]

    def cancel_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        """Event ``cancel`` for every unfinished step; running ones are asked to stop."""
        check_workflow_id(workflow_id)
        with self._transaction() as store:
            if workflow_id not in store.workflows:
                raise WorkflowNotFound(workflow_id)
            workflow = store.workflows[workflow_id]
            if workflow.state in WORKFLOW.final_states:
                raise InvalidTransition.workflow_finished(workflow_id, workflow.state)
            cancellable = QUEUED_JOB_STATES  # every unfinished state but running
            for step_id in workflow.steps:
                step = store.jobs[step_id]
                if step.state == JobState.RUNNING:
                    # the reason is recorded now: the cancel resolves with it
                    asked = replace(step, cancel_requested=True, reason=WORKFLOW_CANCELLED)
                    store.jobs[step_id] = asked
                elif step.state in cancellable:
                    target = _target(store, step, JobEvent.CANCEL)
                    _enter(store, step, target, reason=WORKFLOW_CANCELLED)
            _derive_workflow(store, workflow_id)
            return store.workflows[workflow_id]
