"""The in-memory driver: a fast, thread-safe, single-process store.

It keeps jobs as mutable rows in a dict and hands out frozen snapshots.  One
lock makes every SPI call atomic; a condition on that lock wakes idle
in-process workers as soon as a job becomes available.  The paths a busy
worker pool hits (lease, promote, rescue, idempotent enqueue, finishing a
workflow step) use indexes (:mod:`taskharbor.drivers.memory.index` and the
per-step dependency edges) instead of scanning every job.  Nothing survives
the process: use it for tests, development and embedded short-lived queues.

Every call validates its whole input (types, ids, transitions) before it
changes anything, so a call that raises leaves the store as it was.
"""

from __future__ import annotations

import itertools
import math
import secrets
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeAlias, TypeVar

from taskharbor.spec.clock import Clock, SystemClock
from taskharbor.spec.errors import (
    InvalidRequest,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    WorkflowNotFound,
)
from taskharbor.spec.history import FinishedCount, check_history_queue, check_history_since
from taskharbor.spec.keys import holds_key
from taskharbor.spec.records import (
    CALLBACK_CANCELS,
    CANCELLED_BY_REQUEST,
    JSON,
    LEASE_EXPIRED_MESSAGE,
    LEASE_EXPIRED_TYPE,
    PRUNABLE_WORKFLOW_STATES,
    PRUNED_BY_DEFAULT,
    WORKFLOW_CANCELLED,
    Completion,
    EnqueueRequest,
    EnqueueResult,
    ErrorInfo,
    Failure,
    HeartbeatResult,
    JobFilter,
    JobId,
    JobRecord,
    LeaseRef,
    PromoteResult,
    ResultRef,
    SnoozeRequest,
    WorkflowFilter,
    WorkflowGraph,
    WorkflowId,
    WorkflowRecord,
    check_aware,
    check_batch,
    check_lease_args,
    check_lease_seconds,
    check_prune_states,
    check_queues,
    dependency_reason,
    map_ref,
    partial_input,
    ref_indexes,
    step_failure,
    tolerated_steps,
    wait_timeout,
)
from taskharbor.spec.records import job_ids as check_job_ids
from taskharbor.spec.retry import retry_delay
from taskharbor.spec.spi import Capabilities, Driver
from taskharbor.spec.table import (
    FINISHED_JOB_STATES,
    JOB,
    NEW,
    WORKFLOW,
    JobEvent,
    JobState,
    WorkflowState,
    derive_workflow_state,
)

from .index import JobIndex
from .queues import MemoryQueues
from .rows import JobRow, WorkflowRow, copy_json
from .schedules import MemorySchedules
from .workers import MemoryWorkers

_Report = TypeVar("_Report", Completion, Failure, SnoozeRequest)
"""A fenced report: applied only while its lease is live."""

Touched: TypeAlias = dict[WorkflowId, JobRow | None]
"""The workflows a call touched, each with the first of its steps that ended dead in
the call (None if none did): the step a failure callback is released with."""

_STATES = {state.value: state for state in JobState}
"""The table's target names as states, without an enum call per transition."""


class MemoryDriver(MemorySchedules, MemoryQueues, MemoryWorkers, Driver):
    """Jobs and workflows in this process's memory.  Safe to share between threads."""

    capabilities = Capabilities(
        notifications=True,
        schedules=True,
        flow_control=True,
        failure_callbacks=True,
        partial_chords=True,
        workflow_idempotency=True,
        queue_pause=True,
        workers=True,
        job_metadata=True,
        key_scopes=True,
        finished_counts=True,
    )

    def __init__(self, clock: Clock | None = None) -> None:
        MemoryQueues.__init__(self)
        self.clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        self._job_available = threading.Condition(self._lock)
        self._job_finished = threading.Condition(self._lock)
        self._jobs: dict[JobId, JobRow] = {}
        self._workflows: dict[WorkflowId, WorkflowRow] = {}
        self._keys: dict[str, JobId] = {}
        self._workflow_keys: dict[str, WorkflowId] = {}
        self._tagged: dict[str, dict[JobId, None]] = {}
        """Each tag's jobs, in id order (a dict as an ordered set): ``list_jobs``'s
        ``tag`` reads its own jobs only."""
        self._schedules = {}
        self._workers = {}
        self._index = JobIndex()
        self._last_job_id = 0
        self._last_workflow_id = 0
        self._token_prefix = secrets.token_hex(8)
        self._tokens_issued = itertools.count(1)

    # -- producing ----------------------------------------------------------

    def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[EnqueueResult]:
        check_batch(requests, EnqueueRequest, "enqueue")
        with self._lock:
            now = self._now()
            outcomes: list[tuple[JobRow, bool]] = []
            for request in requests:
                holder = self._key_holder(request.idempotency_key, now)
                if holder is not None:
                    outcomes.append((holder, False))
                else:
                    outcomes.append((self._store_job(request, now), True))
            return [EnqueueResult(row.snapshot(), created) for row, created in outcomes]

    def enqueue_workflow(self, graph: WorkflowGraph) -> WorkflowRecord:
        if not isinstance(graph, WorkflowGraph):
            raise InvalidRequest(f"enqueue_workflow expects a WorkflowGraph, not {graph!r}")
        with self._lock:
            key = graph.idempotency_key
            held_by = self._workflow_keys.get(key) if key is not None else None
            if held_by is not None:
                return self._workflows[held_by].snapshot()
            now = self._now()
            self._last_workflow_id += 1
            workflow_id = self._last_workflow_id
            job_of_step: dict[int, JobId] = {}
            for index, step in enumerate(graph.steps):
                row = self._store_job(
                    step.request,
                    now,
                    workflow_id=workflow_id,
                    depends_on=tuple(job_of_step[dep] for dep in step.after),
                    input_ref=None if step.input is None else map_ref(step.input, job_of_step),
                    partial=step.partial,
                )
                job_of_step[index] = row.id
                for dep in row.depends_on:
                    self._jobs[dep].dependents.append(row.id)
            callback = None
            if graph.on_failure is not None:
                callback = self._store_job(
                    graph.on_failure, now, workflow_id=workflow_id, callback=True
                ).id
            tolerated = {job_of_step[index] for index in tolerated_steps(graph.steps)}
            workflow = WorkflowRow(
                id=workflow_id,
                steps=tuple(job_of_step.values()),
                counted=tuple(job for job in job_of_step.values() if job not in tolerated),
                partial=tuple(
                    job_of_step[index] for index, step in enumerate(graph.steps) if step.partial
                ),
                result=map_ref(graph.result, job_of_step),
                created_at=now,
                name=graph.name,
                on_failure=callback,
                idempotency_key=key,
            )
            self._workflows[workflow_id] = workflow
            if key is not None:
                self._workflow_keys[key] = workflow_id
            return workflow.snapshot()

    def _store_job(
        self,
        request: EnqueueRequest,
        now: datetime,
        *,
        workflow_id: WorkflowId | None = None,
        depends_on: tuple[JobId, ...] = (),
        input_ref: ResultRef | None = None,
        callback: bool = False,
        partial: bool = False,
    ) -> JobRow:
        """Event ``enqueue`` for one new job (a new step's dependencies are never done;
        a failure callback always waits)."""
        run_at = _utc(request.run_at) if request.run_at is not None else now
        facts = {
            "waits_on_dependencies": callback or bool(depends_on),
            "run_at_in_future": run_at > now,
        }
        self._last_job_id += 1
        row = JobRow(
            id=self._last_job_id,
            task=request.task,
            queue=request.queue,
            state=JobState(JOB.resolve(JobEvent.ENQUEUE, NEW, facts)),
            own_args=tuple(copy_json(arg) for arg in request.args),
            kwargs=copy_json(dict(request.kwargs)),
            priority=request.priority,
            run_at=run_at,
            max_attempts=request.max_attempts,
            created_at=now,
            idempotency_key=request.idempotency_key,
            workflow_id=workflow_id,
            depends_on=depends_on,
            input=input_ref,
            retry=request.retry,
            flow=request.flow,
            callback=callback,
            partial=partial,
            headers=dict(request.headers),
            tags=request.tags,
            meta=copy_json(dict(request.meta)) if request.meta else {},
            key_scope=request.key_scope,
        )
        self._jobs[row.id] = row
        if row.idempotency_key is not None:
            self._keys[row.idempotency_key] = row.id
        for tag in row.tags:
            self._tagged.setdefault(tag, {})[row.id] = None
        self._place(row)
        return row

    def _key_holder(self, key: str | None, now: datetime) -> JobRow | None:
        """The job holding ``key`` at ``now``: its last taker (``_keys``), while the
        taker's scope says so.  A new job stored with the key replaces the taker."""
        taker = self._jobs[self._keys[key]] if key in self._keys else None
        if taker is not None and holds_key(taker.key_scope, taker.state, taker.created_at, now):
            return taker
        return None

    # -- consuming ----------------------------------------------------------

    def lease(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker_id: str,
    ) -> list[JobRecord]:
        args = check_lease_args(queues, limit, lease_seconds, worker_id)
        duration = timedelta(seconds=args.lease_seconds)
        with self._lock:
            now = self._now()
            queues = self._leased_queues(args.queues)
            leased: list[JobRow] = []
            walk = self._index.walk(queues)
            try:
                while len(leased) < args.limit:
                    job_id = walk.next()
                    if job_id is None:
                        break
                    row = self._jobs[job_id]
                    held = self._index.flow.held_back(row, now)
                    leasing = JOB.permits(JobEvent.LEASE, row.state, held)
                    if leasing is None:  # held back by a flow limit: stays available
                        head = self._index.flow.sequence_head(row)
                        walk.held(held or {}, None if head is None else self._jobs[head])
                        continue
                    target = _STATES[leasing]
                    self._index.flow.started(row, now)
                    row.attempt += 1
                    row.lease_token = self._new_token()
                    row.leased_by = args.worker_id
                    row.lease_expires_at = now + duration
                    row.progress = None
                    self._enter(row, target, now)
                    leased.append(row)
            finally:
                walk.end()  # nothing stays set aside, whatever happened
            return [row.snapshot() for row in leased]

    def _new_token(self) -> str:
        """A fencing token never issued before by this store: uniqueness is all fencing
        needs, and a counter behind a random prefix is cheaper than fresh randomness."""
        return f"{self._token_prefix}{next(self._tokens_issued):x}"

    def heartbeat(self, leases: Sequence[LeaseRef], lease_seconds: float) -> HeartbeatResult:
        check_batch(leases, LeaseRef, "heartbeat")
        duration = timedelta(seconds=check_lease_seconds(lease_seconds))
        with self._lock:
            now = self._now()
            lost: list[LeaseLost] = []
            cancel_requested: set[JobId] = set()
            holders: set[str] = set()
            for ref in leases:
                row = self._jobs.get(ref.job_id)
                if row is None:
                    lost.append(LeaseLost.missing(ref.job_id, ref.token))
                    continue
                refusal = _refusal(row, ref.token)
                if refusal is not None:
                    lost.append(refusal)
                    continue
                target = self._resolve(row, JobEvent.HEARTBEAT, now)
                row.lease_expires_at = now + duration
                if ref.progress is not None:
                    row.progress = ref.progress
                self._enter(row, target, now)
                if row.cancel_requested:
                    cancel_requested.add(row.id)
                holders.add(str(row.leased_by))
            if self._workers:
                self._seen(holders, now)
            return HeartbeatResult(tuple(lost), frozenset(cancel_requested))

    def complete(self, completions: Sequence[Completion]) -> list[LeaseLost]:
        check_batch(completions, Completion, "complete")
        return self._fenced(completions, self._succeed)

    def fail(self, failures: Sequence[Failure]) -> list[LeaseLost]:
        check_batch(failures, Failure, "fail")
        return self._fenced(failures, self._fail)

    def snooze(self, requests: Sequence[SnoozeRequest]) -> list[LeaseLost]:
        check_batch(requests, SnoozeRequest, "snooze")
        return self._fenced(requests, self._snooze)

    def _fenced(
        self, items: Sequence[_Report], apply: Callable[[JobRow, _Report, datetime], None]
    ) -> list[LeaseLost]:
        """Apply each item whose lease is live, in order, with the workflow effects
        of the jobs it finishes; return the others as ``LeaseLost``."""
        with self._lock:
            now = self._now()
            lost: list[LeaseLost] = []
            touched: Touched = {}
            for item in items:
                row = self._jobs.get(item.job_id)
                if row is None:  # pruned while its worker held it: a lost lease
                    lost.append(LeaseLost.missing(item.job_id, item.token))
                    continue
                refusal = _refusal(row, item.token)
                if refusal is not None:
                    lost.append(refusal)
                    continue
                apply(row, item, now)
                self._after_step_finished(row, now, touched)
            self._settle_workflows(touched, now)
            return lost

    def _succeed(self, row: JobRow, item: Completion, now: datetime) -> None:
        target = self._resolve(row, JobEvent.SUCCEED, now)
        row.result = copy_json(item.result)
        self._enter(row, target, now)

    def _fail(self, row: JobRow, item: Failure, now: datetime) -> None:
        target = self._resolve(row, JobEvent.FAIL, now, permanent=item.permanent)
        error = item.error
        row.errors.append(ErrorInfo(row.attempt, now, error.type, error.message, error.traceback))
        if target is JobState.RETRYING:
            row.run_at = _utc(item.retry_at) if item.retry_at is not None else now
        self._enter(row, target, now)

    def _snooze(self, row: JobRow, item: SnoozeRequest, now: datetime) -> None:
        target = self._resolve(row, JobEvent.SNOOZE, now)
        row.attempt -= 1
        if target is JobState.SCHEDULED:
            row.run_at = _utc(item.run_at)
        self._enter(row, target, now)

    # -- operators ------------------------------------------------------------

    def cancel(self, job_ids: Sequence[JobId]) -> list[JobRecord]:
        wanted = check_job_ids(job_ids, "cancel")
        with self._lock:
            rows = self._rows_of(wanted)
            now = self._now()
            for row in rows:
                if row.state is not JobState.RUNNING:
                    self._resolve(row, JobEvent.CANCEL, now)  # refuse the whole call early
            before = {row.id: row.state for row in rows}
            touched: Touched = {}
            for row in rows:
                if row.state is not before[row.id]:
                    continue  # cancelled earlier in this call by a workflow cascade
                if row.state is JobState.RUNNING:
                    row.cancel_requested = True
                else:
                    self._enter(row, self._resolve(row, JobEvent.CANCEL, now), now)
                    self._after_step_finished(row, now, touched)
            self._settle_workflows(touched, now)
            return [row.snapshot() for row in rows]

    def requeue(self, job_ids: Sequence[JobId]) -> list[JobRecord]:
        wanted = check_job_ids(job_ids, "requeue")
        with self._lock:
            rows = self._rows_of(wanted)
            now = self._now()
            for row in rows:
                self._resolve(row, JobEvent.REQUEUE, now)  # refuse the whole call early
            before = {row.id: row.state for row in rows}
            touched: Touched = {}
            for row in rows:
                if row.state is not before[row.id]:
                    continue  # requeued earlier in this call with the rest of its workflow
                workflow = None if row.workflow_id is None else self._workflows[row.workflow_id]
                if workflow is None or workflow.state is WorkflowState.SUCCEEDED:
                    self._requeue_row(row, now)  # alone (a tolerated step of a succeeded one)
                    if workflow is not None:
                        touched.setdefault(workflow.id, None)
                    continue
                touched.setdefault(workflow.id, None)
                # The items of this workflow and its cancelled steps, in id order: a step
                # comes after those it depends on, so a partial step waits for every
                # dependency that this call brings back.
                for step_id in workflow.jobs():
                    step = self._jobs[step_id]
                    if step.state is JobState.CANCELLED or before.get(step_id) is step.state:
                        self._requeue_row(step, now)
            self._settle_workflows(touched, now)
            return [row.snapshot() for row in rows]

    def _requeue_row(self, row: JobRow, now: datetime) -> None:
        target = self._resolve(row, JobEvent.REQUEUE, now)
        row.attempt = 0
        row.run_at = now
        row.result = None
        if target is JobState.PENDING:
            row.args = row.own_args
        elif not row.callback:  # a released failure callback keeps its failure
            row.args = self._released_args(row)
        self._enter(row, target, now)

    # -- maintenance ------------------------------------------------------------

    def promote(self) -> PromoteResult:
        with self._lock:
            now = self._now()
            due = self._index.take_due(now)
            for job_id in due:
                row = self._jobs[job_id]
                self._enter(row, self._resolve(row, JobEvent.PROMOTE, now), now)
            return PromoteResult(promoted=len(due), next_due=self._index.next_due())

    def rescue(self) -> list[JobId]:
        with self._lock:
            now = self._now()
            expired = sorted(self._index.take_expired(now))
            touched: Touched = {}
            for job_id in expired:
                row = self._jobs[job_id]
                target = self._resolve(row, JobEvent.LEASE_EXPIRED, now)
                row.errors.append(
                    ErrorInfo(row.attempt, now, LEASE_EXPIRED_TYPE, LEASE_EXPIRED_MESSAGE)
                )
                if target is JobState.RETRYING:
                    row.run_at = now + retry_delay(row.retry, row.id, row.attempt)
                self._enter(row, target, now)
                self._after_step_finished(row, now, touched)
            self._settle_workflows(touched, now)
            return expired

    def prune(
        self,
        finished_before: datetime,
        states: Collection[JobState] = PRUNED_BY_DEFAULT,
        *,
        dry_run: bool = False,
    ) -> int:
        check_aware(finished_before, "finished_before")
        pruned = check_prune_states(states)

        def qualifies(row: JobRow) -> bool:
            return row.state in pruned and _finished_before(row, finished_before)

        with self._lock:
            candidates = [self._jobs[i] for i in self._index.take_finished_before(finished_before)]
            deleted = 0
            workflows: dict[WorkflowId, None] = {}
            for row in candidates:
                if row.workflow_id is not None:
                    workflows[row.workflow_id] = None
                elif qualifies(row):
                    if not dry_run:
                        self._delete_job(row)
                    deleted += 1
            for workflow_id in workflows:
                workflow = self._workflows[workflow_id]
                steps = [self._jobs[job_id] for job_id in workflow.jobs()]
                if workflow.state in PRUNABLE_WORKFLOW_STATES and all(map(qualifies, steps)):
                    if not dry_run:
                        for step in steps:
                            self._delete_job(step)
                        del self._workflows[workflow_id]
                        if workflow.idempotency_key is not None:
                            del self._workflow_keys[workflow.idempotency_key]
                    deleted += len(steps)
            for row in candidates:
                if row.id in self._jobs:
                    self._index.place(row)  # kept: back into the finished heap
            return deleted

    def _delete_job(self, row: JobRow) -> None:
        self._index.remove(row)
        del self._jobs[row.id]
        for tag in row.tags:
            tagged = self._tagged[tag]
            del tagged[row.id]
            if not tagged:
                del self._tagged[tag]
        if row.idempotency_key is not None and self._keys.get(row.idempotency_key) == row.id:
            del self._keys[row.idempotency_key]  # else it gave the key up to a newer job

    # -- reading --------------------------------------------------------------

    def get(self, job_ids: Sequence[JobId]) -> list[JobRecord]:
        wanted = check_job_ids(job_ids, "get", distinct=False)
        with self._lock:
            return [row.snapshot() for row in self._rows_of(wanted)]

    def list_jobs(self, where: JobFilter) -> list[JobRecord]:
        if not isinstance(where, JobFilter):
            raise InvalidRequest(f"list_jobs expects a JobFilter, not {where!r}")
        with self._lock:
            if where.workflow_id is not None:
                workflow = self._workflows.get(where.workflow_id)
                ids: Iterable[JobId] = workflow.jobs() if workflow is not None else ()
            elif where.tag is not None:
                ids = self._tagged.get(where.tag, {})
            else:
                ids = self._jobs  # insertion order is id order
            found: list[JobRecord] = []
            for job_id in reversed(list(ids)) if where.newest_first else ids:
                row = self._jobs[job_id]
                if _matches(row, where):
                    found.append(row.snapshot())
                    if len(found) == where.limit:
                        break
            return found

    def count(self) -> Mapping[tuple[str, JobState], int]:
        with self._lock:
            return self._index.counts()

    def finished_per_minute(
        self, since: datetime, *, queue: str | None = None
    ) -> list[FinishedCount]:
        """From the index's per-minute counts: one look-up per minute of the window."""
        check_history_queue(queue)
        with self._lock:
            now = self.clock.now()
            start = check_history_since(since, now)
            return self._index.finished_per_minute(start, now, queue)

    def get_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        with self._lock:
            return self._workflow(workflow_id).snapshot()

    def list_workflows(self, where: WorkflowFilter) -> list[WorkflowRecord]:
        if not isinstance(where, WorkflowFilter):
            raise InvalidRequest(f"list_workflows expects a WorkflowFilter, not {where!r}")
        with self._lock:
            rows = self._workflows.values()  # insertion order is id order
            found: list[WorkflowRecord] = []
            for row in reversed(list(rows)) if where.newest_first else rows:
                if (
                    (where.states is None or row.state in where.states)
                    and (where.name is None or row.name == where.name)
                    and (where.after_id is None or row.id > where.after_id)
                    and (where.before_id is None or row.id < where.before_id)
                ):
                    found.append(row.snapshot())
                    if len(found) == where.limit:
                        break
            return found

    def cancel_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        with self._lock:
            workflow = self._workflow(workflow_id)
            if workflow.state in WORKFLOW.final_states:
                raise InvalidTransition.workflow_finished(workflow_id, workflow.state)
            now = self._now()
            for step_id in workflow.jobs():
                step = self._jobs[step_id]
                if step.state is JobState.RUNNING:
                    step.cancel_requested = True
                    step.reason = WORKFLOW_CANCELLED  # kept when the cancel resolves
                elif step.state not in FINISHED_JOB_STATES:
                    target = self._resolve(step, JobEvent.CANCEL, now)
                    self._enter(step, target, now, reason=WORKFLOW_CANCELLED)
            self._settle_workflows({workflow_id: None}, now)
            return workflow.snapshot()

    # -- waiting --------------------------------------------------------------

    def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Block until one of ``queues`` has an ``available`` job, or ``timeout`` passes."""
        wanted = check_queues(queues, "wait_for_jobs")
        seconds = wait_timeout(timeout, "wait_for_jobs")
        with self._job_available:
            self._job_available.wait_for(
                lambda: self._index.has_ready(self._leased_queues(wanted)),
                timeout=None if seconds == math.inf else seconds,
            )

    def wait_for_finished(self, job_ids_: Sequence[JobId], timeout: float) -> None:
        """Block until one of the jobs is finished (or not stored), or ``timeout`` passes."""
        ids = check_job_ids(job_ids_, "wait_for_finished", distinct=False)
        seconds = wait_timeout(timeout, "wait_for_finished")

        def one_finished() -> bool:
            rows = (self._jobs.get(job_id) for job_id in ids)
            return any(row is None or row.state in FINISHED_JOB_STATES for row in rows)

        with self._job_finished:
            self._job_finished.wait_for(
                one_finished, timeout=None if seconds == math.inf else seconds
            )

    # -- state changes ----------------------------------------------------------

    def _now(self) -> datetime:
        """The clock's now, in UTC; read once per call."""
        return _utc(self.clock.now())

    def _resolve(
        self, row: JobRow, event: JobEvent, now: datetime, *, permanent: bool = False
    ) -> JobState:
        """The target of ``event`` for ``row``, guards evaluated on the stored job."""
        facts = {
            "waits_on_dependencies": self._waits(row),
            "run_at_in_future": row.run_at > now,
            "cancel_requested": row.cancel_requested,
            "permanent": permanent,
            "attempts_exhausted": row.attempt >= row.max_attempts,
        }
        return _STATES[JOB.resolve(event, row.state, facts, subject=row.id)]

    def _waits(self, row: JobRow) -> bool:
        """Guard ``waits_on_dependencies``: a step it depends on has not succeeded
        (a partial step: has not ended)."""
        if not row.depends_on:  # every job outside a workflow: the common case
            return row.callback
        if row.partial:
            return any(self._jobs[dep].state not in FINISHED_JOB_STATES for dep in row.depends_on)
        return any(self._jobs[dep].state is not JobState.SUCCEEDED for dep in row.depends_on)

    def _enter(
        self, row: JobRow, target: JobState, now: datetime, reason: str | None = None
    ) -> None:
        """Move ``row`` to ``target`` after the event's own field effects were applied.

        Applies the rules every event shares: lease fields and
        ``cancel_requested`` exist only while ``running``; ``finished_at`` is
        set on entering a finished state from an unfinished one (a dead job
        cancelled keeps it) and cleared on leaving one; ``reason``
        exists only while ``cancelled`` (or recorded on a running step by its
        workflow's cancel): entering ``cancelled`` it is ``reason``, else the
        recorded one, else ``CANCELLED_BY_REQUEST``.
        """
        if target is not JobState.RUNNING:
            row.lease_token = row.lease_expires_at = row.leased_by = None
            row.cancel_requested = False
        if target not in FINISHED_JOB_STATES:
            row.finished_at = None
        elif row.state not in FINISHED_JOB_STATES:
            row.finished_at = now
        if target is JobState.CANCELLED:
            row.reason = reason or row.reason or CANCELLED_BY_REQUEST
        elif target is not JobState.RUNNING:  # a heartbeat keeps a recorded reason
            row.reason = None
        row.state = target
        self._place(row)

    def _place(self, row: JobRow) -> None:
        self._index.place(row)
        if row.state is JobState.AVAILABLE:
            self._job_available.notify_all()
        elif row.state in FINISHED_JOB_STATES:
            self._job_finished.notify_all()

    # -- workflows ----------------------------------------------------------------

    def _after_step_finished(self, row: JobRow, now: datetime, touched: Touched) -> None:
        """The same-call workflow effects of a step that may just have finished."""
        if row.workflow_id is None or row.state not in FINISHED_JOB_STATES:
            return
        counted = row.id in self._workflows[row.workflow_id].counted
        if touched.get(row.workflow_id) is None and row.state is JobState.DEAD and counted:
            touched[row.workflow_id] = row  # the first counted step dead in this call
        else:
            touched.setdefault(row.workflow_id, None)
        if row.state is JobState.SUCCEEDED:
            self._release_dependents(row, now)
        else:
            self._cancel_dependents(row, now)

    def _release_dependents(self, row: JobRow, now: datetime) -> None:
        """Event ``release`` for each pending dependent whose last dependency was ``row``."""
        for dependent_id in row.dependents:
            dependent = self._jobs[dependent_id]
            if not dependent.partial:  # that one at the end of the call
                self._release_ready(dependent, now)

    def _release_ready(self, step: JobRow, now: datetime) -> None:
        """Event ``release`` for ``step`` if it is pending and no longer waits."""
        if step.state is not JobState.PENDING or self._waits(step):
            return
        target = self._resolve(step, JobEvent.RELEASE, now)
        step.args = self._released_args(step)
        if target is not JobState.SCHEDULED:
            step.run_at = now
        self._enter(step, target, now)

    def _released_args(self, row: JobRow) -> tuple[JSON, ...]:
        """The args of a job whose dependencies succeeded (a partial step: ended): its
        input's value, if it takes one, in front of its own args (a partial step: the
        two values of ``partial_input``)."""
        if row.input is None:
            return row.own_args
        if row.partial:
            assert isinstance(row.input, list), "a partial step's input is a list"
            steps = {job_id: self._jobs[job_id].snapshot() for job_id in ref_indexes(row.input)}
            return (*partial_input(row.input, steps), *row.own_args)
        results = {job_id: self._jobs[job_id].result for job_id in ref_indexes(row.input)}
        return (copy_json(map_ref(row.input, results)), *row.own_args)

    def _cancel_dependents(self, row: JobRow, now: datetime) -> None:
        """Cancel every unfinished step depending on ``row``, directly or not, up to
        the partial steps."""
        reason = dependency_reason(row.id, row.state)
        seen: set[JobId] = set()
        stack = list(row.dependents)
        while stack:
            dependent = self._jobs[stack.pop()]
            if dependent.id in seen:
                continue
            seen.add(dependent.id)
            if dependent.partial:
                continue
            stack.extend(dependent.dependents)
            if dependent.state is JobState.RUNNING:
                dependent.cancel_requested = True
            elif dependent.state not in FINISHED_JOB_STATES:
                target = self._resolve(dependent, JobEvent.CANCEL, now)
                self._enter(dependent, target, now, reason=reason)

    def _settle_workflows(self, touched: Touched, now: datetime) -> None:
        """Derive each touched workflow's state from its steps; change it through the table,
        and move a pending failure callback on with it; first release the partial steps
        that no longer wait."""
        for workflow_id in sorted(touched):
            for step_id in self._workflows[workflow_id].partial:
                self._release_ready(self._jobs[step_id], now)
        for workflow_id in sorted(touched):
            workflow = self._workflows[workflow_id]
            target = derive_workflow_state(
                (self._jobs[step].state for step in workflow.counted), workflow.state
            )
            if target is workflow.state:
                continue
            WORKFLOW.event_for(workflow.state, target, subject=workflow_id)
            workflow.state = target
            workflow.finished_at = None if target is WorkflowState.RUNNING else now
            if workflow.on_failure is not None:
                self._move_callback(self._jobs[workflow.on_failure], touched[workflow_id], now)

    def _move_callback(self, callback: JobRow, dead: JobRow | None, now: datetime) -> None:
        """Release a pending failure callback when its workflow failed (``dead``: the first
        step dead in this call), cancel it when the workflow succeeded or was cancelled."""
        if callback.state is not JobState.PENDING or callback.workflow_id is None:
            return
        state = self._workflows[callback.workflow_id].state
        if state is WorkflowState.FAILED:
            assert dead is not None, "a workflow fails only in the call a step dies in"
            target = self._resolve(callback, JobEvent.RELEASE, now)
            failure = step_failure(callback.workflow_id, dead.snapshot())
            callback.args = (failure, *callback.own_args)
            if target is not JobState.SCHEDULED:
                callback.run_at = now
            self._enter(callback, target, now)
        elif state in CALLBACK_CANCELS:
            target = self._resolve(callback, JobEvent.CANCEL, now)
            self._enter(callback, target, now, reason=CALLBACK_CANCELS[state])

    # -- lookups --------------------------------------------------------------------

    def _rows_of(self, ids: Iterable[JobId]) -> list[JobRow]:
        """The rows of ``ids`` in order; ``JobNotFound`` names the first missing id."""
        rows: list[JobRow] = []
        for job_id in ids:
            row = self._jobs.get(job_id)
            if row is None:
                raise JobNotFound(job_id)
            rows.append(row)
        return rows

    def _workflow(self, workflow_id: WorkflowId) -> WorkflowRow:
        if isinstance(workflow_id, bool) or not isinstance(workflow_id, int):
            raise InvalidRequest(f"workflow id must be an int, not {workflow_id!r}")
        workflow = self._workflows.get(workflow_id)
        if workflow is None:
            raise WorkflowNotFound(workflow_id)
        return workflow


def _refusal(row: JobRow, token: str) -> LeaseLost | None:
    """The report of a fenced item on ``row`` with ``token``, or None if the lease is live."""
    if row.state is JobState.RUNNING and row.lease_token == token:
        return None
    return LeaseLost.stale(row.id, token, row.state)


def _utc(moment: datetime) -> datetime:
    """The same instant in UTC: every datetime the driver stores and returns is UTC."""
    return moment.astimezone(UTC)


def _finished_before(row: JobRow, cutoff: datetime) -> bool:
    return row.finished_at is not None and row.finished_at < cutoff


def _matches(row: JobRow, where: JobFilter) -> bool:
    return (
        (where.states is None or row.state in where.states)
        and (where.task is None or row.task == where.task)
        and (where.queue is None or row.queue == where.queue)
        and (where.workflow_id is None or row.workflow_id == where.workflow_id)
        and (where.after_id is None or row.id > where.after_id)
        and (where.before_id is None or row.id < where.before_id)
        and (where.created_since is None or row.created_at >= where.created_since)
        and (where.tag is None or where.tag in row.tags)
    )
