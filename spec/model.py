"""The reference model: the contract of :mod:`taskharbor.spec.spi` as the simplest code.

It is the oracle the model tests compare every driver with, so it trades all
speed for obviousness: jobs are frozen records in a dict, every query is a
full scan, every change is ``dataclasses.replace`` after
:data:`~taskharbor.spec.table.JOB` resolved the target state, and each call
runs under one lock on a copy of the store that replaces the store only when
the call returns (so a call that raises changes nothing).
"""

from __future__ import annotations

import copy
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from .clock import Clock, SystemClock
from .errors import InvalidRequest, InvalidTransition, JobNotFound, LeaseLost, WorkflowNotFound
from .flow import OnDead, rate_bucket
from .history import (
    FINISHED_OUTCOMES,
    FinishedCount,
    check_history_queue,
    check_history_since,
    counts_by_minute,
)
from .keys import holds_key
from .queues import QueueRecord, check_paused, paused_record, queue_names
from .records import (
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
    ErrorReport,
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
    check_workflow_id,
    dependency_reason,
    job_ids,
    map_ref,
    partial_input,
    step_failure,
    tolerated_steps,
)
from .retry import retry_delay
from .schedules import (
    Schedule,
    ScheduleNotFound,
    ScheduleRecord,
    TickResult,
    check_schedule_name,
    check_schedules,
    earliest_tick,
    plan_ticks,
    resumed,
    run_request,
    schedule_names,
    synced,
)
from .spi import Capabilities, Driver
from .table import (
    FINISHED_JOB_STATES,
    JOB,
    NEW,
    QUEUED_JOB_STATES,
    WORKFLOW,
    JobEvent,
    JobState,
    WorkflowState,
    derive_workflow_state,
)
from .workers import (
    WorkerInfo,
    WorkerRecord,
    check_worker_ids,
    check_workers,
    is_forgotten,
    is_gone,
    ordered,
    registered,
)

_LEASE_FIELDS_CLEARED: dict[str, Any] = {
    "lease_token": None,
    "lease_expires_at": None,
    "leased_by": None,
    "cancel_requested": False,
}


@dataclass
class _Store:
    """Everything the model holds; copied at the start of every call."""

    jobs: dict[JobId, JobRecord] = field(default_factory=dict)
    workflows: dict[WorkflowId, WorkflowRecord] = field(default_factory=dict)
    step_args: dict[JobId, tuple[JSON, ...]] = field(default_factory=dict)
    step_input: dict[JobId, ResultRef | None] = field(default_factory=dict)
    next_job_id: int = 1
    next_workflow_id: int = 1
    schedules: dict[str, ScheduleRecord] = field(default_factory=dict)
    starts: list[tuple[str, datetime]] = field(default_factory=list)
    """Every start (lease) of a job with a rate limit: its rate bucket and when."""
    paused: dict[str, QueueRecord] = field(default_factory=dict)
    """The paused queues' records, by name."""
    workers: dict[str, WorkerRecord] = field(default_factory=dict)
    """The workers registry, each record as registered and last seen."""
    partial: set[JobId] = field(default_factory=set)
    """The partial steps (``StepSpec.partial``)."""
    tolerated: set[JobId] = field(default_factory=set)
    """The tolerated steps (``tolerated_steps``): they do not count in the derived state."""
    gave_up_keys: set[JobId] = field(default_factory=set)
    """The jobs that gave their idempotency key up to a newer job (never hold it again)."""

    def copy(self) -> _Store:
        return _Store(
            dict(self.jobs),
            dict(self.workflows),
            dict(self.step_args),
            dict(self.step_input),
            self.next_job_id,
            self.next_workflow_id,
            dict(self.schedules),
            list(self.starts),
            dict(self.paused),
            dict(self.workers),
            set(self.partial),
            set(self.tolerated),
            set(self.gave_up_keys),
        )


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _holds_sequence(earlier: JobRecord, job: JobRecord) -> bool:
    """Whether ``earlier`` holds back ``job`` in their key's sequence."""
    if earlier.id >= job.id or earlier.flow is None or earlier.flow.sequence is None:
        return False
    if job.flow is None or earlier.flow.key != job.flow.key:
        return False
    if earlier.state == JobState.DEAD:
        return earlier.flow.sequence == OnDead.BLOCK
    return earlier.state not in FINISHED_JOB_STATES


class ReferenceModel(Driver):
    """The executable contract.  Implements :class:`~taskharbor.spec.spi.Driver`."""

    capabilities = Capabilities(
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

    def __init__(
        self, clock: Clock | None = None, *, jitter_id: Callable[[JobId], JobId] | None = None
    ) -> None:
        """``jitter_id`` maps the model's id of a job to the id that seeds its retry
        jitter (:func:`~taskharbor.spec.retry.retry_delay`).  The identity by default;
        a harness comparing the model with a store that numbers jobs differently (a
        PostgreSQL sequence skips a number on every idempotency conflict) passes
        the store's id, since the contract seeds the jitter with the store's own id."""
        self.clock = clock or SystemClock()
        self._jitter_id = jitter_id or (lambda job_id: job_id)
        self._lock = threading.Lock()
        self._store = _Store()
        self._now = datetime.min.replace(tzinfo=UTC)
        self._states_before: dict[WorkflowId, WorkflowState] = {}
        """The state each workflow the current call touched had when it first touched it."""
        self._first_dead: dict[WorkflowId, JobRecord] = {}
        """The first step of each workflow that ended dead in the current call."""

    # -- the one way each call runs -----------------------------------------

    def _call(self, body: Callable[[_Store], Any]) -> Any:
        """Run ``body`` on a copy of the store; keep the copy only if it returns."""
        with self._lock:
            self._now = _utc(self.clock.now())
            self._states_before = {}
            self._first_dead = {}
            work = self._store.copy()
            result = body(work)
            self._release_partial_steps(work)
            self._move_callbacks(work)
            self._store = work
            return result

    # -- helpers on jobs ------------------------------------------------------

    def _facts(self, s: _Store, job: JobRecord, *, permanent: bool = False) -> dict[str, bool]:
        return {
            "waits_on_dependencies": _is_callback(s, job)
            or any(
                s.jobs[dep].state not in _ENDS_AWAITED[job.id in s.partial]
                for dep in job.depends_on
            ),
            "run_at_in_future": job.run_at > self._now,
            "cancel_requested": job.cancel_requested,
            "permanent": permanent,
            "attempts_exhausted": job.attempt >= job.max_attempts,
        }

    def _flow_facts(self, s: _Store, job: JobRecord) -> dict[str, bool]:
        """The guards of ``lease`` (:mod:`taskharbor.spec.flow`), counted the plain way."""
        flow = job.flow
        if flow is None:
            return {}
        running = [j for j in s.jobs.values() if j.state == JobState.RUNNING]
        with_key = [j for j in running if j.flow is not None and j.flow.key == flow.key]
        bucket = rate_bucket(job.task, flow)
        window = timedelta(seconds=flow.rate.window if flow.rate is not None else 0)
        recent = [at for name, at in s.starts if name == bucket and self._now < at + window]
        return {
            "task_at_limit": flow.concurrency is not None
            and len([j for j in running if j.task == job.task]) >= flow.concurrency,
            "key_at_limit": flow.key_concurrency is not None
            and len(with_key) >= flow.key_concurrency,
            "sequence_waits": flow.sequence is not None
            and any(_holds_sequence(earlier, job) for earlier in s.jobs.values()),
            "rate_exhausted": flow.rate is not None and len(recent) >= flow.rate.starts,
        }

    def _resolve(
        self, s: _Store, job: JobRecord, event: JobEvent, *, permanent: bool = False
    ) -> JobState:
        """The state ``event`` takes ``job`` to, by the table and the job's guard facts."""
        facts = self._facts(s, job, permanent=permanent)
        return JobState(JOB.resolve(event, job.state, facts, subject=job.id))

    def _set(self, s: _Store, job: JobRecord, target: JobState, **changes: Any) -> JobRecord:
        """Store ``job`` in ``target`` with the field effects every event shares."""
        if target in FINISHED_JOB_STATES and job.state not in FINISHED_JOB_STATES:
            changes.setdefault("finished_at", self._now)
        if target == JobState.CANCELLED:
            changes.setdefault("reason", job.reason or CANCELLED_BY_REQUEST)
        if job.state == JobState.RUNNING and target != JobState.RUNNING:
            changes = {**_LEASE_FIELDS_CLEARED, "reason": None, **changes}
        moved = replace(job, state=target, **changes)
        s.jobs[job.id] = moved
        return moved

    def _move(self, s: _Store, job: JobRecord, event: JobEvent, **changes: Any) -> JobRecord:
        """Apply ``event`` through the table, with ``changes`` whatever the target."""
        return self._set(s, job, self._resolve(s, job, event), **changes)

    def _find(self, s: _Store, ids: Iterable[JobId]) -> list[JobRecord]:
        found = []
        for job_id in ids:
            if job_id not in s.jobs:
                raise JobNotFound(job_id)
            found.append(s.jobs[job_id])
        return found

    def _live(self, job: JobRecord, token: str) -> bool:
        return job.state == JobState.RUNNING and job.lease_token == token

    def _error(self, job: JobRecord, report: ErrorReport) -> tuple[ErrorInfo, ...]:
        info = ErrorInfo(job.attempt, self._now, report.type, report.message, report.traceback)
        return (*job.errors, info)

    def _store_job(
        self,
        s: _Store,
        request: EnqueueRequest,
        *,
        depends_on: tuple[JobId, ...] = (),
        workflow_id: WorkflowId | None = None,
        waits: bool = False,
    ) -> JobRecord:
        run_at = _utc(request.run_at) if request.run_at is not None else self._now
        facts = {
            "waits_on_dependencies": waits or bool(depends_on),
            "run_at_in_future": run_at > self._now,
        }
        job = JobRecord(
            id=s.next_job_id,
            task=request.task,
            queue=request.queue,
            state=JobState(JOB.resolve(JobEvent.ENQUEUE, NEW, facts)),
            args=request.args,
            kwargs=dict(request.kwargs),
            priority=request.priority,
            run_at=run_at,
            attempt=0,
            max_attempts=request.max_attempts,
            created_at=self._now,
            idempotency_key=request.idempotency_key,
            workflow_id=workflow_id,
            depends_on=depends_on,
            retry=request.retry,
            flow=request.flow,
            headers=dict(request.headers),
            tags=request.tags,
            meta=copy.deepcopy(dict(request.meta)),
            key_scope=request.key_scope,
        )
        s.next_job_id += 1
        s.jobs[job.id] = job
        return job

    # -- producing ------------------------------------------------------------

    def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[EnqueueResult]:
        check_batch(requests, EnqueueRequest, "enqueue")

        def body(s: _Store) -> list[EnqueueResult]:
            return [self._enqueue_keyed(s, request) for request in requests]

        result: list[EnqueueResult] = self._call(body)
        return result

    def enqueue_workflow(self, graph: WorkflowGraph) -> WorkflowRecord:
        if not isinstance(graph, WorkflowGraph):
            raise InvalidRequest(f"enqueue_workflow needs a WorkflowGraph, not {graph!r}")

        def body(s: _Store) -> WorkflowRecord:
            key = graph.idempotency_key
            held = (w for w in s.workflows.values() if key and w.idempotency_key == key)
            holder = next(held, None)
            if holder is not None:
                return holder
            workflow_id = s.next_workflow_id
            s.next_workflow_id += 1
            ids: list[JobId] = []
            for step in graph.steps:
                depends_on = tuple(ids[index] for index in step.after)
                job = self._store_job(
                    s, step.request, depends_on=depends_on, workflow_id=workflow_id
                )
                ids.append(job.id)
                s.step_args[job.id] = step.request.args
                s.step_input[job.id] = None if step.input is None else _to_job_ids(step.input, ids)
                if step.partial:
                    s.partial.add(job.id)
            s.tolerated.update(ids[index] for index in tolerated_steps(graph.steps))
            callback = None
            if graph.on_failure is not None:
                callback = self._store_job(
                    s, graph.on_failure, workflow_id=workflow_id, waits=True
                ).id
                s.step_args[callback] = graph.on_failure.args
                s.step_input[callback] = None
            record = WorkflowRecord(
                id=workflow_id,
                state=WorkflowState.RUNNING,
                steps=tuple(ids),
                result=_to_job_ids(graph.result, ids),
                created_at=self._now,
                name=graph.name,
                on_failure=callback,
                idempotency_key=key,
            )
            s.workflows[workflow_id] = record
            return record

        result: WorkflowRecord = self._call(body)
        return result

    # -- consuming ------------------------------------------------------------

    def lease(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker_id: str,
    ) -> list[JobRecord]:
        args = check_lease_args(queues, limit, lease_seconds, worker_id)

        def body(s: _Store) -> list[JobRecord]:
            ready = [
                j
                for j in s.jobs.values()
                if j.state == JobState.AVAILABLE
                and j.queue in args.queues
                and j.queue not in s.paused
            ]
            ready.sort(key=lambda j: (-j.priority, j.run_at, j.id))
            leased: list[JobRecord] = []
            for job in ready:
                if len(leased) == args.limit:
                    break
                target = JOB.permits(JobEvent.LEASE, job.state, self._flow_facts(s, job))
                if target is None:
                    continue  # held back by a flow limit: it stays available
                bucket = rate_bucket(job.task, job.flow)
                if bucket is not None:
                    s.starts.append((bucket, self._now))
                leased.append(
                    self._set(
                        s,
                        job,
                        JobState(target),
                        attempt=job.attempt + 1,
                        lease_token=secrets.token_hex(16),
                        lease_expires_at=self._now + timedelta(seconds=args.lease_seconds),
                        leased_by=args.worker_id,
                        progress=None,
                    )
                )
            return leased

        result: list[JobRecord] = self._call(body)
        return result

    def heartbeat(self, leases: Sequence[LeaseRef], lease_seconds: float) -> HeartbeatResult:
        check_batch(leases, LeaseRef, "heartbeat")
        seconds = check_lease_seconds(lease_seconds)

        def body(s: _Store) -> HeartbeatResult:
            lost = []
            cancel_requested = set()
            for ref in leases:
                job = s.jobs.get(ref.job_id)
                if job is None or not self._live(job, ref.token):
                    lost.append(self._refusal(job, ref))
                    continue
                expires = self._now + timedelta(seconds=seconds)
                progress = job.progress if ref.progress is None else ref.progress
                moved = self._move(
                    s, job, JobEvent.HEARTBEAT, lease_expires_at=expires, progress=progress
                )
                if moved.cancel_requested:
                    cancel_requested.add(job.id)
                self._seen(s, [str(job.leased_by)])
            return HeartbeatResult(tuple(lost), frozenset(cancel_requested))

        result: HeartbeatResult = self._call(body)
        return result

    def complete(self, completions: Sequence[Completion]) -> list[LeaseLost]:
        check_batch(completions, Completion, "complete")

        def body(s: _Store) -> list[LeaseLost]:
            def apply(job: JobRecord, item: Completion) -> JobRecord:
                return self._move(s, job, JobEvent.SUCCEED, result=item.result)

            return self._fenced(s, completions, apply)

        result: list[LeaseLost] = self._call(body)
        return result

    def fail(self, failures: Sequence[Failure]) -> list[LeaseLost]:
        check_batch(failures, Failure, "fail")

        def body(s: _Store) -> list[LeaseLost]:
            def apply(job: JobRecord, item: Failure) -> JobRecord:
                target = self._resolve(s, job, JobEvent.FAIL, permanent=item.permanent)
                changes: dict[str, Any] = {"errors": self._error(job, item.error)}
                if target == JobState.RETRYING:
                    changes["run_at"] = _utc(item.retry_at) if item.retry_at else self._now
                return self._set(s, job, target, **changes)

            return self._fenced(s, failures, apply)

        result: list[LeaseLost] = self._call(body)
        return result

    def snooze(self, requests: Sequence[SnoozeRequest]) -> list[LeaseLost]:
        check_batch(requests, SnoozeRequest, "snooze")

        def body(s: _Store) -> list[LeaseLost]:
            def apply(job: JobRecord, item: SnoozeRequest) -> JobRecord:
                target = self._resolve(s, job, JobEvent.SNOOZE)
                changes: dict[str, Any] = {"attempt": job.attempt - 1}
                if target == JobState.SCHEDULED:
                    changes["run_at"] = _utc(item.run_at)
                return self._set(s, job, target, **changes)

            return self._fenced(s, requests, apply)

        result: list[LeaseLost] = self._call(body)
        return result

    def _fenced(
        self,
        s: _Store,
        items: Sequence[Completion | Failure | SnoozeRequest],
        apply: Callable[[JobRecord, Any], JobRecord],
    ) -> list[LeaseLost]:
        """Apply each item whose lease is live, in order; report the others."""
        lost = []
        for item in items:
            job = s.jobs.get(item.job_id)
            if job is None or not self._live(job, item.token):
                lost.append(self._refusal(job, item))
                continue
            self._after_step_finished(s, apply(job, item))
        return lost

    def _refusal(
        self, job: JobRecord | None, item: LeaseRef | Completion | Failure | SnoozeRequest
    ) -> LeaseLost:
        """The report of a fenced item refused: its job is missing, or its lease not live."""
        if job is None:
            return LeaseLost.missing(item.job_id, item.token)
        return LeaseLost.stale(job.id, item.token, job.state)

    # -- operators ------------------------------------------------------------

    def cancel(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        ids = job_ids(job_ids_, "cancel")

        def body(s: _Store) -> list[JobRecord]:
            self._find(s, ids)
            before = dict(s.jobs)
            for job_id in ids:
                job = s.jobs[job_id]
                if job is not before[job_id]:
                    continue  # already cancelled by an earlier item's workflow
                if job.state == JobState.RUNNING:
                    s.jobs[job_id] = replace(job, cancel_requested=True)
                else:
                    self._after_step_finished(s, self._move(s, job, JobEvent.CANCEL))
            return [s.jobs[job_id] for job_id in ids]

        result: list[JobRecord] = self._call(body)
        return result

    def requeue(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        ids = job_ids(job_ids_, "requeue")

        def body(s: _Store) -> list[JobRecord]:
            self._find(s, ids)
            before, wanted = dict(s.jobs), set(ids)
            for job_id in ids:
                job = s.jobs[job_id]
                if job is not before[job_id]:
                    continue  # already requeued with an earlier item's workflow
                workflow = None if job.workflow_id is None else s.workflows[job.workflow_id]
                if workflow is None or workflow.state == WorkflowState.SUCCEEDED:
                    self._requeue_one(s, job)  # alone (a tolerated step of a succeeded one)
                    continue
                # The items of this workflow and its cancelled steps, in id order: a step
                # comes after those it depends on, so a partial step waits for every
                # dependency that this call brings back.
                for step_id in _jobs_of(workflow):
                    step = s.jobs[step_id]
                    if step.state == JobState.CANCELLED or (
                        step_id in wanted and step is before[step_id]
                    ):
                        self._requeue_one(s, step)
                self._derive_workflow(s, workflow.id)
            return [s.jobs[job_id] for job_id in ids]

        result: list[JobRecord] = self._call(body)
        return result

    def _requeue_one(self, s: _Store, job: JobRecord) -> JobRecord:
        moved = self._move(
            s,
            job,
            JobEvent.REQUEUE,
            attempt=0,
            run_at=self._now,
            cancel_requested=False,
            finished_at=None,
            reason=None,
            result=None,
        )
        released_callback = _is_callback(s, job) and moved.state != JobState.PENDING
        if job.id in s.step_args and not released_callback:  # that one keeps its failure
            moved = replace(moved, args=self._step_args_for(s, moved))
            s.jobs[job.id] = moved
        return moved

    def _step_args_for(self, s: _Store, job: JobRecord) -> tuple[JSON, ...]:
        """A step's own args, with its input in front once it is released."""
        own = s.step_args[job.id]
        ref = s.step_input[job.id]
        if ref is None or job.state == JobState.PENDING:
            return own
        if job.id in s.partial:
            assert isinstance(ref, list), "a partial step's input is a list"
            return (*partial_input(ref, {dep: s.jobs[dep] for dep in job.depends_on}), *own)
        results = {dep: s.jobs[dep].result for dep in job.depends_on}
        return (map_ref(ref, results), *own)

    # -- maintenance ----------------------------------------------------------

    def promote(self) -> PromoteResult:
        def body(s: _Store) -> PromoteResult:
            waiting = (JobState.SCHEDULED, JobState.RETRYING)
            promoted = 0
            for job in list(s.jobs.values()):
                if job.state in waiting and job.run_at <= self._now:
                    self._move(s, job, JobEvent.PROMOTE)
                    promoted += 1
            later = [j.run_at for j in s.jobs.values() if j.state in waiting]
            return PromoteResult(promoted, min(later, default=None))

        result: PromoteResult = self._call(body)
        return result

    def rescue(self) -> list[JobId]:
        def body(s: _Store) -> list[JobId]:
            rescued = []
            for job in sorted(s.jobs.values(), key=lambda j: j.id):
                expires = job.lease_expires_at
                if job.state != JobState.RUNNING or expires is None or expires > self._now:
                    continue
                report = ErrorReport(LEASE_EXPIRED_TYPE, LEASE_EXPIRED_MESSAGE)
                target = self._resolve(s, job, JobEvent.LEASE_EXPIRED)
                changes: dict[str, Any] = {"errors": self._error(job, report)}
                if target == JobState.RETRYING:
                    changes["run_at"] = self._now + retry_delay(
                        job.retry, self._jitter_id(job.id), job.attempt
                    )
                self._after_step_finished(s, self._set(s, job, target, **changes))
                rescued.append(job.id)
            return rescued

        result: list[JobId] = self._call(body)
        return result

    def prune(
        self,
        finished_before: datetime,
        states: Collection[JobState] = PRUNED_BY_DEFAULT,
        *,
        dry_run: bool = False,
    ) -> int:
        check_aware(finished_before, "finished_before")
        pruned = check_prune_states(states)
        horizon = _utc(finished_before)

        def old(job: JobRecord) -> bool:
            return job.state in pruned and (
                job.finished_at is not None and job.finished_at < horizon
            )

        def body(s: _Store) -> int:
            doomed = [j.id for j in s.jobs.values() if j.workflow_id is None and old(j)]
            for workflow in list(s.workflows.values()):
                members = _jobs_of(workflow)
                steps = [s.jobs[job_id] for job_id in members]
                if workflow.state in PRUNABLE_WORKFLOW_STATES and all(map(old, steps)):
                    doomed.extend(members)
                    if not dry_run:
                        del s.workflows[workflow.id]
            if dry_run:
                return len(doomed)
            for job_id in doomed:
                del s.jobs[job_id]
                s.step_args.pop(job_id, None)
                s.step_input.pop(job_id, None)
            return len(doomed)

        result: int = self._call(body)
        return result

    # -- reading --------------------------------------------------------------

    def get(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        ids = job_ids(job_ids_, "get", distinct=False)
        result: list[JobRecord] = self._call(lambda s: self._find(s, ids))
        return result

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
                and (where.tag is None or where.tag in job.tags)
            )

        def body(s: _Store) -> list[JobRecord]:
            found = sorted(filter(matches, s.jobs.values()), key=lambda j: j.id)
            return (found[::-1] if where.newest_first else found)[: where.limit]

        result: list[JobRecord] = self._call(body)
        return result

    def count(self) -> Mapping[tuple[str, JobState], int]:
        def body(s: _Store) -> dict[tuple[str, JobState], int]:
            return dict(Counter((j.queue, j.state) for j in s.jobs.values()))

        result: dict[tuple[str, JobState], int] = self._call(body)
        return result

    def finished_per_minute(
        self, since: datetime, *, queue: str | None = None
    ) -> list[FinishedCount]:
        check_history_queue(queue)

        def body(s: _Store) -> list[FinishedCount]:
            start = check_history_since(since, self._now)
            return counts_by_minute(
                [
                    (j.finished_at, j.queue, j.state)
                    for j in s.jobs.values()
                    if j.state in FINISHED_OUTCOMES
                    and j.finished_at is not None
                    and j.finished_at >= start
                    and queue in (None, j.queue)
                ]
            )

        result: list[FinishedCount] = self._call(body)
        return result

    def get_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        check_workflow_id(workflow_id)

        def body(s: _Store) -> WorkflowRecord:
            if workflow_id not in s.workflows:
                raise WorkflowNotFound(workflow_id)
            return s.workflows[workflow_id]

        result: WorkflowRecord = self._call(body)
        return result

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

        def body(s: _Store) -> list[WorkflowRecord]:
            found = sorted(filter(matches, s.workflows.values()), key=lambda w: w.id)
            return (found[::-1] if where.newest_first else found)[: where.limit]

        result: list[WorkflowRecord] = self._call(body)
        return result

    def cancel_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        check_workflow_id(workflow_id)

        def body(s: _Store) -> WorkflowRecord:
            if workflow_id not in s.workflows:
                raise WorkflowNotFound(workflow_id)
            workflow = s.workflows[workflow_id]
            if workflow.state in WORKFLOW.final_states:
                raise InvalidTransition.workflow_finished(workflow_id, workflow.state)
            for step_id in _jobs_of(workflow):
                step = s.jobs[step_id]
                if step.state == JobState.RUNNING:
                    # the reason is recorded now; the cancel resolves with it
                    asked = replace(step, cancel_requested=True, reason=WORKFLOW_CANCELLED)
                    s.jobs[step_id] = asked
                elif step.state in QUEUED_JOB_STATES:
                    self._move(s, step, JobEvent.CANCEL, reason=WORKFLOW_CANCELLED)
            self._derive_workflow(s, workflow_id)
            return s.workflows[workflow_id]

        result: WorkflowRecord = self._call(body)
        return result

    # -- queues -----------------------------------------------------------------

    def pause_queues(self, queues: Sequence[str], paused: bool) -> list[QueueRecord]:
        names = queue_names(queues, "pause_queues")
        check_paused(paused, "pause_queues")

        def body(s: _Store) -> list[QueueRecord]:
            records = []
            for name in names:
                record = paused_record(s.paused.get(name), name, paused, self._now)
                if record.paused:
                    s.paused[name] = record
                else:
                    s.paused.pop(name, None)
                records.append(record)
            return records

        result: list[QueueRecord] = self._call(body)
        return result

    def paused_queues(self) -> list[QueueRecord]:
        result: list[QueueRecord] = self._call(lambda s: [s.paused[n] for n in sorted(s.paused)])
        return result

    # -- schedules --------------------------------------------------------------

    def _schedules(self, s: _Store, names: Sequence[str]) -> list[ScheduleRecord]:
        for name in names:
            if name not in s.schedules:
                raise ScheduleNotFound(name)
        return [s.schedules[name] for name in names]

    def _enqueue_keyed(self, s: _Store, request: EnqueueRequest) -> EnqueueResult:
        """``enqueue`` of one request: the job holding its key, else a new job.

        The key's last taker holds it while its scope says so; once it no longer
        does, it gives the key up for good to the new job."""
        key = request.idempotency_key
        taker = next(
            (
                j
                for j in s.jobs.values()
                if key and j.idempotency_key == key and j.id not in s.gave_up_keys
            ),
            None,
        )
        if taker is not None:
            if self._holds_key(taker):
                return EnqueueResult(taker, created=False)
            s.gave_up_keys.add(taker.id)
        return EnqueueResult(self._store_job(s, request), created=True)

    def _holds_key(self, taker: JobRecord) -> bool:
        """Whether the job that took its key still holds it now."""
        return holds_key(taker.key_scope, taker.state, taker.created_at, self._now)

    def sync_schedules(self, schedules: Sequence[Schedule]) -> list[ScheduleRecord]:
        declared = check_schedules(schedules, "sync_schedules")

        def body(s: _Store) -> list[ScheduleRecord]:
            for schedule in declared:
                s.schedules[schedule.name] = synced(
                    s.schedules.get(schedule.name), schedule, self._now
                )
            return [s.schedules[schedule.name] for schedule in declared]

        result: list[ScheduleRecord] = self._call(body)
        return result

    def enqueue_due_ticks(self, names: Sequence[str]) -> TickResult:
        wanted = schedule_names(names, "enqueue_due_ticks")

        def body(s: _Store) -> TickResult:
            created: list[JobRecord] = []
            for record in self._schedules(s, wanted):
                last = s.jobs.get(record.last_job_id) if record.last_job_id else None
                unfinished = last is not None and last.state not in FINISHED_JOB_STATES
                plan = plan_ticks(record, self._now, unfinished)
                last_job_id = record.last_job_id
                for request in plan.requests:
                    outcome = self._enqueue_keyed(s, request)
                    last_job_id = outcome.job.id
                    if outcome.created:
                        created.append(outcome.job)
                s.schedules[record.name] = replace(
                    record, cursor=plan.cursor, last_job_id=last_job_id
                )
            jobs = tuple(s.jobs[job.id] for job in created)
            return TickResult(jobs, earliest_tick([s.schedules[name] for name in wanted]))

        result: TickResult = self._call(body)
        return result

    def list_schedules(self) -> list[ScheduleRecord]:
        result: list[ScheduleRecord] = self._call(
            lambda s: [s.schedules[name] for name in sorted(s.schedules)]
        )
        return result

    def pause_schedules(self, names: Sequence[str], paused: bool) -> list[ScheduleRecord]:
        wanted = schedule_names(names, "pause_schedules")
        if not isinstance(paused, bool):
            raise InvalidRequest(f"pause_schedules: paused must be a bool, not {paused!r}")

        def body(s: _Store) -> list[ScheduleRecord]:
            for record in self._schedules(s, wanted):
                s.schedules[record.name] = resumed(record, paused, self._now)
            return [s.schedules[name] for name in wanted]

        result: list[ScheduleRecord] = self._call(body)
        return result

    def run_schedule(self, name: str) -> JobRecord:
        check_schedule_name(name)

        def body(s: _Store) -> JobRecord:
            (record,) = self._schedules(s, [name])
            job = self._enqueue_keyed(s, run_request(record.schedule, self._now)).job
            s.schedules[name] = replace(record, last_job_id=job.id)
            return job

        result: JobRecord = self._call(body)
        return result

    def drop_schedules(self, names: Sequence[str]) -> None:
        wanted = schedule_names(names, "drop_schedules")

        def body(s: _Store) -> None:
            self._schedules(s, wanted)
            for name in wanted:
                del s.schedules[name]

        self._call(body)

    # -- workflows --------------------------------------------------------------

    def _after_step_finished(self, s: _Store, job: JobRecord) -> None:
        """Release or cancel a finished step's dependents, then derive the workflow."""
        if job.workflow_id is None or job.state not in FINISHED_JOB_STATES:
            return
        for step_id in s.workflows[job.workflow_id].steps:
            step = s.jobs[step_id]
            if step.state != JobState.PENDING:
                continue  # dependents of an unfinished step can only be pending
            if step_id in s.partial:
                continue  # released at the end of the call, once it no longer waits
            if job.state == JobState.SUCCEEDED:
                ready = not self._facts(s, step)["waits_on_dependencies"]
                if job.id in step.depends_on and ready:
                    self._release(s, step)
            elif self._cascades_to(s, step, job.id):
                reason = dependency_reason(job.id, job.state)
                self._move(s, step, JobEvent.CANCEL, reason=reason)
        counted_death = job.state == JobState.DEAD and job.id not in s.tolerated
        self._derive_workflow(s, job.workflow_id, dead=job if counted_death else None)

    def _release(self, s: _Store, step: JobRecord) -> None:
        target = self._resolve(s, step, JobEvent.RELEASE)
        run_at = step.run_at if target == JobState.SCHEDULED else self._now
        released = self._set(s, step, target, run_at=run_at)
        s.jobs[step.id] = replace(released, args=self._step_args_for(s, released))

    def _cascades_to(self, s: _Store, job: JobRecord, ancestor: JobId) -> bool:
        """Whether ``ancestor`` ending badly cancels ``job``: it waits on ``ancestor``,
        directly or through other steps, and neither it nor a step between is partial."""
        return job.id not in s.partial and any(
            dep == ancestor or self._cascades_to(s, s.jobs[dep], ancestor) for dep in job.depends_on
        )

    def _derive_workflow(
        self, s: _Store, workflow_id: WorkflowId, *, dead: JobRecord | None = None
    ) -> None:
        """Derive the workflow's state from its steps; ``dead`` is the step that just
        ended dead, if one did (it is the one a failure callback hears about)."""
        workflow = s.workflows[workflow_id]
        self._states_before.setdefault(workflow_id, workflow.state)
        if dead is not None:
            self._first_dead.setdefault(workflow_id, dead)
        counted = (step_id for step_id in workflow.steps if step_id not in s.tolerated)
        target = derive_workflow_state(
            (s.jobs[step_id].state for step_id in counted), workflow.state
        )
        if target == workflow.state:
            return
        WORKFLOW.event_for(workflow.state, target, subject=workflow_id)
        finished_at = None if target == WorkflowState.RUNNING else self._now
        s.workflows[workflow_id] = replace(workflow, state=target, finished_at=finished_at)

    def _release_partial_steps(self, s: _Store) -> None:
        """At the end of a call, release each pending partial step of the workflows the
        call touched that no longer waits (every step it depends on has ended)."""
        for workflow_id in sorted(self._states_before):
            for step_id in s.workflows[workflow_id].steps:
                step = s.jobs[step_id]
                waiting = step_id in s.partial and step.state == JobState.PENDING
                if waiting and not self._facts(s, step)["waits_on_dependencies"]:
                    self._release(s, step)

    def _move_callbacks(self, s: _Store) -> None:
        """At the end of a call, move each pending failure callback whose workflow's state
        the call changed, by the state the workflow ends the call in."""
        for workflow_id, before in sorted(self._states_before.items()):
            workflow = s.workflows[workflow_id]
            if workflow.on_failure is None or workflow.state == before:
                continue
            callback = s.jobs[workflow.on_failure]
            if callback.state != JobState.PENDING:
                continue
            if workflow.state == WorkflowState.FAILED:
                dead = self._first_dead[workflow_id]  # a workflow fails in a call a step dies in
                self._release(s, callback)
                released = s.jobs[callback.id]
                s.jobs[callback.id] = replace(
                    released, args=(step_failure(workflow_id, dead), *released.args)
                )
            elif workflow.state in CALLBACK_CANCELS:
                reason = CALLBACK_CANCELS[workflow.state]
                self._move(s, callback, JobEvent.CANCEL, reason=reason)

    # -- workers (spec.workers) ----------------------------------------------------

    def _seen(self, s: _Store, worker_ids: Iterable[str]) -> list[str]:
        """Mark the stored ones of ``worker_ids`` as seen now; the others, in order."""
        unknown = []
        for worker_id in worker_ids:
            worker = s.workers.get(worker_id)
            if worker is None:
                unknown.append(worker_id)
            else:
                s.workers[worker_id] = replace(worker, last_seen_at=self._now)
        return unknown

    def _forget_workers(self, s: _Store) -> None:
        for worker in list(s.workers.values()):
            if is_forgotten(worker.last_seen_at, worker.ttl_seconds, self._now):
                del s.workers[worker.id]

    def register_workers(self, workers: Sequence[WorkerInfo]) -> list[WorkerRecord]:
        infos = check_workers(workers)

        def body(s: _Store) -> list[WorkerRecord]:
            self._forget_workers(s)
            for info in infos:
                s.workers[info.id] = registered(info, self._now)
            return [self._worker_view(s, s.workers[info.id]) for info in infos]

        result: list[WorkerRecord] = self._call(body)
        return result

    def heartbeat_workers(self, worker_ids: Sequence[str]) -> list[str]:
        ids = check_worker_ids(worker_ids, "heartbeat_workers")

        def body(s: _Store) -> list[str]:
            self._forget_workers(s)
            return self._seen(s, ids)

        result: list[str] = self._call(body)
        return result

    def deregister_workers(self, worker_ids: Sequence[str]) -> None:
        ids = check_worker_ids(worker_ids, "deregister_workers")

        def body(s: _Store) -> None:
            self._forget_workers(s)
            for worker_id in ids:
                s.workers.pop(worker_id, None)

        self._call(body)

    def list_workers(self) -> list[WorkerRecord]:
        def body(s: _Store) -> list[WorkerRecord]:
            return [self._worker_view(s, worker) for worker in ordered(list(s.workers.values()))]

        result: list[WorkerRecord] = self._call(body)
        return result

    def _worker_view(self, s: _Store, worker: WorkerRecord) -> WorkerRecord:
        """The record as read now: its running jobs, and whether it is gone."""
        running = sorted(
            job.id
            for job in s.jobs.values()
            if job.state == JobState.RUNNING and job.leased_by == worker.id
        )
        gone = is_gone(worker.last_seen_at, worker.ttl_seconds, self._now)
        return replace(worker, running=tuple(running), gone=gone)


_ENDS_AWAITED: Mapping[bool, frozenset[JobState]] = {
    False: frozenset({JobState.SUCCEEDED}),
    True: frozenset(FINISHED_JOB_STATES),
}
"""The states of a step's dependencies it waits for, by whether it is partial."""


def _is_callback(s: _Store, job: JobRecord) -> bool:
    """Whether ``job`` is its workflow's failure callback."""
    return job.workflow_id is not None and s.workflows[job.workflow_id].on_failure == job.id


def _jobs_of(workflow: WorkflowRecord) -> tuple[JobId, ...]:
    """Every job of ``workflow``: its steps, then its failure callback if it has one."""
    if workflow.on_failure is None:
        return workflow.steps
    return (*workflow.steps, workflow.on_failure)


def _to_job_ids(ref: ResultRef, ids: list[JobId]) -> ResultRef:
    """A step-index ref rewritten with the steps' job ids."""
    if isinstance(ref, int):
        return ids[ref]
    return [_to_job_ids(item, ids) for item in ref]
