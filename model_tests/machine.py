"""The state machine: one driver and the reference model, operation by operation.

Each rule draws one random operation, applies it to both stores (the driver's
copy of the arguments translated into its own ids and tokens), and compares
what the two return.  After every rule the invariant :meth:`stores_agree`
compares everything observable of the two stores and checks the contract's
invariants on both.  The harness talks in the model's ids throughout (see
:mod:`taskharbor.model_tests.identity`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import ClassVar, TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskharbor.spec import (
    FINISHED_JOB_STATES,
    MAX_HISTORY,
    UNTIL_PRUNED,
    Clock,
    Completion,
    Driver,
    Failure,
    FakeClock,
    JobFilter,
    JobId,
    JobNotFound,
    JobRecord,
    JobState,
    LeaseLost,
    LeaseRef,
    SnoozeRequest,
    TaskHarborError,
    WorkflowFilter,
    WorkflowId,
    WorkflowState,
    minute_of,
    tolerated_steps,
)
from taskharbor.spec.model import ReferenceModel
from taskharbor.spec.records import JSON

from .divergence import Divergence
from .flow import LIMITED_REQUESTS, flow_problems, sequence_problems
from .identity import IdentityMap
from .invariants import not_utc, snapshot_problems
from .observe import (
    Snapshot,
    job_to_model,
    model_job,
    sequence_differences,
    snapshot_differences,
    snapshot_driver,
    snapshot_model,
    workflow_to_model,
)
from .queues import PAUSES, QueueSteps
from .schedules import ScheduleSteps
from .strategies import (
    FAILURES,
    LARGE_STEPS,
    LEASE_LIMITS,
    LEASE_SECONDS,
    LEASED_QUEUES,
    PRUNE_HORIZONS,
    PRUNE_STATES,
    QUEUES,
    REQUESTS,
    RESULTS,
    SMALL_STEPS,
    SNOOZE_DELAYS,
    TASKS,
    WORKERS,
    WORKFLOW_NAMES,
    WORKFLOWS,
    FailurePlan,
    RequestPlan,
    WorkflowPlan,
    graph_without_metadata,
    offset,
    progress_of,
    tag_of,
    without_metadata,
)

START = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
"""Where every run's clock starts (with microseconds, which a driver must keep)."""

UNKNOWN_IDS = (1_000_000_001, 1_000_000_002)
"""Ids no store has issued (the harness creates far fewer jobs and workflows)."""

CREATED_SINCE_SHIFTS = (timedelta(0), timedelta(microseconds=-1), timedelta(microseconds=1))
"""How far ``list_jobs``' ``created_since`` lies from the ``created_at`` it was drawn from."""

WAITING_FOR_TIME = (JobState.SCHEDULED, JobState.RETRYING)
"""States whose jobs wait for their ``run_at`` (and ``promote``)."""

MAX_BACKLOG = 6
"""Enqueueing stops while this many jobs are unfinished, so that steps go to working
them off: a small store where operations keep meeting each other."""

DriverFactory = Callable[[Clock], Driver]
T = TypeVar("T")
Item = TypeVar("Item", Completion, Failure, SnoozeRequest)


@dataclass(frozen=True, slots=True)
class _Factory:
    """Holds the driver factory (a plain class attribute would become a method)."""

    make: DriverFactory


REFUSED_CALLS: dict[str, Callable[[Driver, JobId], object]] = {
    "enqueue([])": lambda store, job: store.enqueue([]),
    "lease([], ...)": lambda store, job: store.lease([], 1, 30.0, WORKERS[0]),
    "lease(limit=0)": lambda store, job: store.lease([QUEUES[0]], 0, 30.0, WORKERS[0]),
    "lease(lease_seconds=0)": lambda store, job: store.lease([QUEUES[0]], 1, 0.0, WORKERS[0]),
    "heartbeat([])": lambda store, job: store.heartbeat([], 30.0),
    "complete([])": lambda store, job: store.complete([]),
    "fail([])": lambda store, job: store.fail([]),
    "snooze([])": lambda store, job: store.snooze([]),
    "cancel([])": lambda store, job: store.cancel([]),
    "requeue([])": lambda store, job: store.requeue([]),
    "get([])": lambda store, job: store.get([]),
    "cancel([job, job])": lambda store, job: store.cancel([job, job]),
    "requeue([job, job])": lambda store, job: store.requeue([job, job]),
}
"""Malformed calls every store must refuse, by a short description.  ``job`` is the
newest job the harness created: naming it twice in one batch is refused whatever
its state, even once it is pruned."""


def _job_id(value: object) -> JobId:
    """A job id an error carries (typed ``object`` there), checked to be one."""
    if not isinstance(value, int):
        raise Divergence(f"an error names job {value!r}, which is not a job id")
    return value


def _expect(what: str, problems: list[str]) -> None:
    if problems:
        raise Divergence(f"{what}:\n  " + "\n  ".join(problems))


class DriverVsModel(ScheduleSteps, QueueSteps, RuleBasedStateMachine):
    """Random operations on a driver and on the reference model, compared step by step.

    Not used directly: :func:`driver_state_machine` makes a subclass bound to
    one driver factory.
    """

    factory: ClassVar[_Factory]

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(START)
        self.ids = IdentityMap()
        self.model: Driver = ReferenceModel(clock=self.clock, jitter_id=self.ids.jobs.to_driver)
        self.driver = self.factory.make(self.clock)
        self.driver.migrate()
        for unknown in UNKNOWN_IDS:
            self.ids.link_job(unknown, unknown)
            self.ids.workflows.link(unknown, unknown)
        self.created: list[JobId] = []
        """Every job either store created, by the model's id, in creation order."""
        self.newest_driver_id = 0
        self.workflow_ids: list[WorkflowId] = []
        self.tolerated: set[JobId] = set()
        """The model's ids of tolerated steps (``tolerated_steps``)."""
        self.partial: set[JobId] = set()
        """The model's ids of partial steps."""
        self.leases: list[LeaseRef] = []
        """Every lease ever given, in the model's terms: live ones and stale ones."""
        self.view = Snapshot({}, {}, {})
        """The model as the last check saw it."""
        self.pruned: int | None = None
        """How many jobs the last call deleted, when it was ``prune``."""
        self.refused = False
        """The last call raised on both sides, so it must have changed nothing."""
        self.refusals: tuple[TaskHarborError, TaskHarborError] | None = None
        """What the model and the driver raised when they last refused a call."""
        self.declared: set[str] = set()
        """Names of the schedules declared and not dropped since."""

    def teardown(self) -> None:
        self.driver.close()
        self.model.close()

    # -- running one operation on both stores ---------------------------------

    def _both(
        self, what: str, on_model: Callable[[], T], on_driver: Callable[[], T]
    ) -> tuple[T, T] | None:
        """Run an operation on the model and on the driver.

        Returns both results, or None when both refused the call with the
        same error type (the next check then verifies nothing changed).
        """
        try:
            expected = on_model()
        except TaskHarborError as refusal:
            model_error = refusal
        else:
            try:
                return expected, on_driver()
            except TaskHarborError as error:
                raise Divergence(
                    f"{what}: the driver raised {error!r}; the model returned {expected!r}"
                ) from error
        try:
            got = on_driver()
        except TaskHarborError as error:
            if type(error) is not type(model_error):
                raise Divergence(
                    f"{what}: the model raised {type(model_error).__name__} ({model_error}); "
                    f"the driver raised {type(error).__name__} ({error})"
                ) from error
            self.refused = True
            self.refusals = (model_error, error)
            return None
        raise Divergence(
            f"{what}: the model raised {type(model_error).__name__} ({model_error}); "
            f"the driver returned {got!r}"
        )

    def _link_new_job(self, model_id: JobId, driver_id: JobId) -> None:
        if self.created and (model_id <= self.created[-1] or driver_id <= self.newest_driver_id):
            raise Divergence(
                f"job ids must increase in enqueue order: model {self.created[-1]} -> {model_id}, "
                f"driver {self.newest_driver_id} -> {driver_id}"
            )
        self.ids.link_job(model_id, driver_id)
        self.created.append(model_id)
        self.newest_driver_id = driver_id

    def _driver_ref(self, ref: LeaseRef) -> LeaseRef:
        return LeaseRef(
            self.ids.jobs.to_driver(ref.job_id), self.ids.tokens.to_driver(ref.token), ref.progress
        )

    def _compare_lost(self, what: str, expected: list[LeaseLost], got: list[LeaseLost]) -> None:
        translated = [
            LeaseLost(
                self.ids.jobs.to_model(_job_id(lost.job_id)),
                self.ids.tokens.to_model(lost.token),
                lost.state,
                lost.reason,
            )
            for lost in got
        ]
        _expect(f"{what}: refused items", sequence_differences("lost", expected, translated))

    def _compare_jobs(
        self, what: str, expected: Sequence[JobRecord], got: Sequence[JobRecord]
    ) -> None:
        translated = [job_to_model(job, self.ids) for job in got]
        _expect(what, sequence_differences(what, [model_job(j) for j in expected], translated))

    # -- drawing arguments ----------------------------------------------------

    def _any(self, *states: JobState) -> bool:
        """Whether some stored job is in one of ``states`` (as of the last check)."""
        return any(job.state in states for job in self.view.jobs.values())

    def _backlog(self) -> int:
        """How many stored jobs are not finished."""
        return sum(job.state not in FINISHED_JOB_STATES for job in self.view.jobs.values())

    def _jobs_in(self, *states: JobState) -> list[JobRecord]:
        return [job for job in self.view.jobs.values() if job.state in states]

    def _draw_created_since(self, data: st.DataObject) -> datetime | None:
        """None, or a bound at, just before or just after some job's ``created_at``
        (or now): where an inclusive bound and an exclusive one differ."""
        moments = sorted({job.created_at for job in self.view.jobs.values()} | {self.clock.now()})
        moment = data.draw(st.one_of(st.none(), st.sampled_from(moments)))
        if moment is None:
            return None
        return moment + data.draw(st.sampled_from(CREATED_SINCE_SHIFTS))

    def _draw_leases(self, data: st.DataObject) -> list[LeaseRef]:
        """One to three leases of distinct jobs: mostly live, some stale.

        The stale ones favour the dangerous case: a lease whose job is running
        again under a newer lease, where a late report must not win.
        """
        live = [
            LeaseRef(job.id, job.lease_token)
            for job in self.view.jobs.values()
            if job.lease_token is not None
        ]
        superseded = [
            ref
            for ref in self.leases
            if ref.job_id in self.view.jobs
            and self.view.jobs[ref.job_id].lease_token not in (None, ref.token)
        ]
        pools = [live] * 3 + [superseded, self.leases]
        choice = st.one_of([st.sampled_from(pool) for pool in pools if pool])
        refs: list[LeaseRef] = data.draw(
            st.lists(choice, min_size=1, max_size=3, unique_by=lambda ref: ref.job_id),
            label="leases",
        )
        return refs

    def _draw_job_ids(
        self, data: st.DataObject, preferred: Callable[[JobRecord], bool]
    ) -> list[JobId]:
        """One to three distinct job ids.

        Mostly only ``preferred`` jobs (those the call applies to), so that
        calls succeed; often with a straggler among them (any job ever
        created), and sometimes with an unknown id, so that whole batches are
        refused after part of them was fine.
        """

        def batches(ids: st.SearchStrategy[JobId]) -> st.SearchStrategy[list[JobId]]:
            return st.lists(ids, min_size=1, max_size=3, unique=True)

        known = st.sampled_from(self.created)
        unknown = st.sampled_from(UNKNOWN_IDS)
        candidates = [job.id for job in self.view.jobs.values() if preferred(job)]
        if not candidates:
            choice = batches(st.one_of(known, known, unknown))
        else:
            fitting = st.sampled_from(candidates)
            choice = st.one_of(
                batches(fitting),
                batches(fitting),
                batches(st.one_of(fitting, known)),
                batches(st.one_of(fitting, known, unknown)),
            )
        ids: list[JobId] = data.draw(choice, label="job ids")
        return ids

    def _to_driver(self, job_ids: Sequence[JobId]) -> list[JobId]:
        return [self.ids.jobs.to_driver(job_id) for job_id in job_ids]

    # -- producing ------------------------------------------------------------

    @precondition(lambda self: self._backlog() < MAX_BACKLOG)
    @rule(plans=st.lists(REQUESTS, min_size=1, max_size=3))
    def enqueue(self, plans: list[RequestPlan]) -> None:
        batch = [plan.request(self.clock.now()) for plan in plans]
        if not self.driver.capabilities.job_metadata:
            batch = [without_metadata(request) for request in batch]
        if not self.driver.capabilities.key_scopes:
            batch = [replace(request, key_scope=UNTIL_PRUNED) for request in batch]
        outcome = self._both(
            "enqueue", lambda: self.model.enqueue(batch), lambda: self.driver.enqueue(batch)
        )
        if outcome is None:
            return
        expected, got = outcome
        created = ([r.created for r in expected], [r.created for r in got])
        _expect("enqueue: created flags", [] if created[0] == created[1] else [str(created)])
        for mine, theirs in zip(expected, got, strict=True):
            if mine.created:
                self._link_new_job(mine.job.id, theirs.job.id)
        self._compare_jobs("enqueue", [r.job for r in expected], [r.job for r in got])

    @precondition(
        lambda self: self._backlog() < MAX_BACKLOG and self.driver.capabilities.flow_control
    )
    @rule(plans=st.lists(LIMITED_REQUESTS, min_size=1, max_size=3))
    def enqueue_limited(self, plans: list[RequestPlan]) -> None:
        """Jobs with flow limits (:mod:`taskharbor.model_tests.flow`)."""
        self.enqueue(plans)

    @precondition(lambda self: self._backlog() < MAX_BACKLOG)
    @rule(plan=WORKFLOWS)
    def enqueue_workflow(self, plan: WorkflowPlan) -> None:
        graph = plan.graph(self.clock.now())
        if not self.driver.capabilities.failure_callbacks:
            graph = replace(graph, on_failure=None)
        if not self.driver.capabilities.workflow_idempotency:
            graph = replace(graph, idempotency_key=None)
        if not self.driver.capabilities.partial_chords:
            graph = replace(graph, steps=tuple(replace(s, partial=False) for s in graph.steps))
        if not self.driver.capabilities.job_metadata:
            graph = graph_without_metadata(graph)
        outcome = self._both(
            "enqueue_workflow",
            lambda: self.model.enqueue_workflow(graph),
            lambda: self.driver.enqueue_workflow(graph),
        )
        if outcome is None:
            return
        expected, got = outcome
        if len(expected.steps) != len(got.steps):
            raise Divergence(f"enqueue_workflow: steps model={expected} driver={got}")
        self.ids.workflows.link(expected.id, got.id)
        if expected.id not in self.workflow_ids:  # a held key stores nothing
            for mine, theirs in zip(expected.steps, got.steps, strict=True):
                self._link_new_job(mine, theirs)
            for index in tolerated_steps(graph.steps):
                self.tolerated.add(expected.steps[index])
            for index, spec in enumerate(graph.steps):
                if spec.partial:
                    self.partial.add(expected.steps[index])
                    if spec.input is not None:
                        self.ids.partial.add(got.steps[index])
            if (expected.on_failure is None) != (got.on_failure is None):
                raise Divergence(f"enqueue_workflow: on_failure model={expected} driver={got}")
            if expected.on_failure is not None and got.on_failure is not None:
                self._link_new_job(expected.on_failure, got.on_failure)
                self.ids.callbacks.add(got.on_failure)
            self.workflow_ids.append(expected.id)
        _expect(
            "enqueue_workflow",
            sequence_differences("workflow", [expected], [workflow_to_model(got, self.ids)]),
        )

    # -- consuming --------------------------------------------------------------

    @precondition(lambda self: self._any(JobState.AVAILABLE))
    @rule(
        queues=LEASED_QUEUES,
        limit=LEASE_LIMITS,
        seconds=st.sampled_from(LEASE_SECONDS),
        worker=st.sampled_from(WORKERS),
        pause=PAUSES,
    )
    def lease(
        self,
        queues: list[str],
        limit: int,
        seconds: float,
        worker: str,
        pause: tuple[list[str], bool] | None,
    ) -> None:
        if pause is not None and self._pause_supported():
            self.pause_queues(*pause)
        self._lease(queues, limit, seconds, worker)

    def _lease(self, queues: list[str], limit: int, seconds: float, worker: str) -> list[LeaseRef]:
        """Lease on both stores; return the new leases (in the model's terms)."""
        outcome = self._both(
            "lease",
            lambda: self.model.lease(queues, limit, seconds, worker),
            lambda: self.driver.lease(queues, limit, seconds, worker),
        )
        if outcome is None:
            return []
        expected, got = outcome
        leased = ([job.id for job in expected], [self.ids.jobs.to_model(job.id) for job in got])
        for side, ids in (("model", leased[0]), ("driver", leased[1])):
            _expect(f"{side} lease: sequence order", sequence_problems(self.view, ids))
            _expect(f"{side} lease: flow limits", flow_problems(self.view, ids))
        _expect("lease: jobs leased", [] if leased[0] == leased[1] else [f"{leased}"])
        for mine, theirs in zip(expected, got, strict=True):
            if mine.lease_token is None or theirs.lease_token is None:
                raise Divergence(f"lease: job {mine.id} came back without a lease token")
            self.ids.tokens.link(mine.lease_token, theirs.lease_token)
            self.leases.append(LeaseRef(mine.id, mine.lease_token))
        self._compare_jobs("lease", expected, got)
        return self.leases[len(self.leases) - len(expected) :]

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data(), seconds=st.sampled_from(LEASE_SECONDS))
    def heartbeat(self, data: st.DataObject, seconds: float) -> None:
        refs = self._draw_leases(data)
        if self.driver.capabilities.job_metadata:
            refs = [replace(ref, progress=progress_of(ref, seconds)) for ref in refs]
        outcome = self._both(
            "heartbeat",
            lambda: self.model.heartbeat(refs, seconds),
            lambda: self.driver.heartbeat([self._driver_ref(ref) for ref in refs], seconds),
        )
        if outcome is None:
            return
        expected, got = outcome
        self._compare_lost("heartbeat", list(expected.lost), list(got.lost))
        asked = frozenset(self.ids.jobs.to_model(job_id) for job_id in got.cancel_requested)
        if asked != expected.cancel_requested:
            raise Divergence(
                f"heartbeat: cancel_requested model={sorted(expected.cancel_requested)} "
                f"driver={sorted(asked)}"
            )

    def _report(
        self,
        what: str,
        refs: list[LeaseRef],
        item: Callable[[LeaseRef, int], Item],
        send: Callable[[Driver, list[Item]], list[LeaseLost]],
    ) -> None:
        """Send a fenced report (``item`` per lease, by position) to both stores."""
        mine = [item(ref, index) for index, ref in enumerate(refs)]
        theirs = [item(self._driver_ref(ref), index) for index, ref in enumerate(refs)]
        outcome = self._both(
            what, lambda: send(self.model, mine), lambda: send(self.driver, theirs)
        )
        if outcome is not None:
            self._compare_lost(what, *outcome)

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data(), results=st.lists(RESULTS, min_size=3, max_size=3))
    def complete(self, data: st.DataObject, results: list[JSON]) -> None:
        self._complete(self._draw_leases(data), results)

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data(), failures=st.lists(FAILURES, min_size=3, max_size=3))
    def fail(self, data: st.DataObject, failures: list[FailurePlan]) -> None:
        self._fail(self._draw_leases(data), failures)

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data(), delays=st.lists(SNOOZE_DELAYS, min_size=3, max_size=3))
    def snooze(self, data: st.DataObject, delays: list[float]) -> None:
        self._snooze(self._draw_leases(data), delays)

    @precondition(lambda self: self._any(JobState.AVAILABLE))
    @rule(
        data=st.data(),
        report=st.sampled_from(["complete", "fail", "snooze"]),
        results=st.lists(RESULTS, min_size=3, max_size=3),
        failures=st.lists(FAILURES, min_size=3, max_size=3),
        delays=st.lists(SNOOZE_DELAYS, min_size=3, max_size=3),
    )
    def worker_round(
        self,
        data: st.DataObject,
        report: str,
        results: list[JSON],
        failures: list[FailurePlan],
        delays: list[float],
    ) -> None:
        """A worker's whole round in one step: lease a batch, report on all of it.

        The separate lease and report rules interleave workers; this one makes
        long runs of finished jobs (and released workflow steps) likely.
        """
        queues = data.draw(LEASED_QUEUES, label="queues")
        limit = data.draw(LEASE_LIMITS, label="limit")
        seconds = data.draw(st.sampled_from(LEASE_SECONDS), label="lease seconds")
        refs = self._lease(queues, limit, seconds, WORKERS[0])
        if not refs:
            return
        if report == "complete":
            self._complete(refs, results)
        elif report == "fail":
            self._fail(refs, failures)
        else:
            self._snooze(refs, delays)

    def _complete(self, refs: list[LeaseRef], results: list[JSON]) -> None:
        self._report(
            "complete",
            refs,
            lambda ref, index: Completion(ref.job_id, ref.token, results[index]),
            lambda store, items: store.complete(items),
        )

    def _fail(self, refs: list[LeaseRef], failures: list[FailurePlan]) -> None:
        now = self.clock.now()
        self._report(
            "fail",
            refs,
            lambda ref, index: failures[index].failure(ref, now),
            lambda store, items: store.fail(items),
        )

    def _snooze(self, refs: list[LeaseRef], delays: list[float]) -> None:
        now = self.clock.now()
        self._report(
            "snooze",
            refs,
            lambda ref, index: SnoozeRequest(ref.job_id, ref.token, offset(now, delays[index])),
            lambda store, items: store.snooze(items),
        )

    # -- operators --------------------------------------------------------------

    @precondition(lambda self: bool(self.created))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_ids = self._draw_job_ids(data, lambda job: job.state not in FINISHED_JOB_STATES)
        outcome = self._both(
            "cancel",
            lambda: self.model.cancel(job_ids),
            lambda: self.driver.cancel(self._to_driver(job_ids)),
        )
        if outcome is not None:
            self._compare_jobs("cancel", *outcome)

    @precondition(lambda self: self._any(JobState.DEAD, JobState.CANCELLED))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        finished_badly = (JobState.DEAD, JobState.CANCELLED)
        job_ids = self._draw_job_ids(data, lambda job: job.state in finished_badly)
        outcome = self._both(
            "requeue",
            lambda: self.model.requeue(job_ids),
            lambda: self.driver.requeue(self._to_driver(job_ids)),
        )
        if outcome is not None:
            self._compare_jobs("requeue", *outcome)

    @precondition(lambda self: bool(self.workflow_ids))
    @rule(data=st.data())
    def cancel_workflow(self, data: st.DataObject) -> None:
        choice = st.one_of(*[st.sampled_from(self.workflow_ids)] * 4, st.sampled_from(UNKNOWN_IDS))
        workflow_id: WorkflowId = data.draw(choice, label="workflow id")
        outcome = self._both(
            "cancel_workflow",
            lambda: self.model.cancel_workflow(workflow_id),
            lambda: self.driver.cancel_workflow(self.ids.workflows.to_driver(workflow_id)),
        )
        if outcome is not None:
            expected, got = outcome
            _expect(
                "cancel_workflow",
                sequence_differences("workflow", [expected], [workflow_to_model(got, self.ids)]),
            )

    # -- time and maintenance -----------------------------------------------------

    @precondition(lambda self: self._any(*WAITING_FOR_TIME, JobState.RUNNING))
    @rule(seconds=st.one_of(st.sampled_from(SMALL_STEPS), st.sampled_from(LARGE_STEPS)))
    def advance_clock(self, seconds: float) -> None:
        """Let time pass (only while some job waits for it: a run_at or a lease expiry)."""
        self.clock.advance(seconds)
        self._compare_finished_counts()

    def _compare_finished_counts(self) -> None:
        """``finished_per_minute`` over the longest window the contract allows, on both
        stores (capability ``finished_counts``); no draw, so the sequences stay as
        they were.  Called where counts most often go wrong: after prune, and when
        time has passed since the last finishing calls."""
        if not self.driver.capabilities.finished_counts:
            return
        now = self.clock.now()
        since = minute_of(now - MAX_HISTORY)
        if since < now - MAX_HISTORY:
            since += timedelta(minutes=1)
        outcome = self._both(
            "finished_per_minute",
            lambda: self.model.finished_per_minute(since),
            lambda: self.driver.finished_per_minute(since),
        )
        if outcome is not None:
            what = f"finished_per_minute({since.isoformat()})"
            _expect(what, sequence_differences("bucket", *outcome))

    @precondition(lambda self: self._any(*WAITING_FOR_TIME))
    @rule()
    def promote(self) -> None:
        outcome = self._both("promote", self.model.promote, self.driver.promote)
        if outcome is not None:
            expected, got = outcome
            problems = sequence_differences("result", [expected], [got])
            _expect("promote", problems + not_utc({"driver next_due": got.next_due}))

    @precondition(lambda self: self._any(*WAITING_FOR_TIME))
    @rule()
    def next_run_at_comes(self) -> None:
        """Move the clock exactly onto the earliest future ``run_at``, then promote."""
        self._move_clock_to(job.run_at for job in self._jobs_in(*WAITING_FOR_TIME))
        self.promote()

    @precondition(lambda self: self._any(JobState.RUNNING))
    @rule()
    def rescue(self) -> None:
        outcome = self._both("rescue", self.model.rescue, self.driver.rescue)
        if outcome is not None:
            expected, got = outcome
            rescued = [self.ids.jobs.to_model(job_id) for job_id in got]
            _expect("rescue", [] if rescued == expected else [f"model={expected} driver={rescued}"])

    @precondition(lambda self: self._any(JobState.RUNNING))
    @rule()
    def next_lease_runs_out(self) -> None:
        """Move the clock exactly onto the earliest lease expiry, then rescue."""
        self._move_clock_to(
            job.lease_expires_at
            for job in self._jobs_in(JobState.RUNNING)
            if job.lease_expires_at is not None
        )
        self.rescue()

    def _move_clock_to(self, moments: Iterable[datetime]) -> None:
        """Jump to the earliest of ``moments`` still ahead (stay if none is)."""
        now = self.clock.now()
        ahead = [moment for moment in moments if moment > now]
        if ahead:
            self.clock.set(min(ahead))

    @precondition(lambda self: self._any(*FINISHED_JOB_STATES))
    @rule(
        horizon=st.sampled_from(PRUNE_HORIZONS),
        states=st.sampled_from(PRUNE_STATES),
        dry_run=st.booleans(),
    )
    def prune(self, horizon: float, states: frozenset[JobState], dry_run: bool) -> None:
        before = offset(self.clock.now(), horizon)
        outcome = self._both(
            "prune",
            lambda: self.model.prune(before, states, dry_run=dry_run),
            lambda: self.driver.prune(before, states, dry_run=dry_run),
        )
        if outcome is not None:
            expected, got = outcome
            _expect("prune", [] if expected == got else [f"model deleted {expected}, driver {got}"])
            self.pruned = 0 if dry_run else expected
            self._compare_finished_counts()

    # -- reading ----------------------------------------------------------------

    @precondition(lambda self: bool(self.created))
    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        job_ids = self._draw_job_ids(data, lambda job: True)
        outcome = self._both(
            "get",
            lambda: self.model.get(job_ids),
            lambda: self.driver.get(self._to_driver(job_ids)),
        )
        if outcome is not None:
            self._compare_jobs("get", *outcome)
            return
        model_error, driver_error = self.refusals or (None, None)
        if isinstance(model_error, JobNotFound) and isinstance(driver_error, JobNotFound):
            named = self.ids.jobs.to_model(_job_id(driver_error.job_id))
            if named != model_error.job_id:
                raise Divergence(f"get {job_ids}: model names {model_error}, driver names {named}")

    @precondition(lambda self: bool(self.created))
    @rule(
        data=st.data(),
        states=st.one_of(st.none(), st.frozensets(st.sampled_from(JobState), min_size=1)),
        task=st.one_of(st.none(), st.sampled_from(TASKS)),
        queue=st.one_of(st.none(), st.sampled_from(QUEUES)),
        limit=st.integers(1, 5),
    )
    def list_jobs(
        self,
        data: st.DataObject,
        states: frozenset[JobState] | None,
        task: str | None,
        queue: str | None,
        limit: int,
    ) -> None:
        after_id = data.draw(st.one_of(st.none(), st.sampled_from(self.created)))
        before_id = data.draw(st.one_of(st.none(), st.sampled_from(self.created)))
        newest_first = data.draw(st.booleans())
        workflow_ids = [*self.workflow_ids, *UNKNOWN_IDS]
        workflow_id = data.draw(st.one_of(st.none(), st.sampled_from(workflow_ids)))
        created_since = self._draw_created_since(data)
        tag = tag_of(limit) if self.driver.capabilities.job_metadata else None
        model_filter = JobFilter(
            states,
            task,
            queue,
            workflow_id,
            after_id,
            limit,
            created_since=created_since,
            before_id=before_id,
            newest_first=newest_first,
            tag=tag,
        )

        def driver_filter() -> JobFilter:
            return JobFilter(
                states,
                task,
                queue,
                None if workflow_id is None else self.ids.workflows.to_driver(workflow_id),
                None if after_id is None else self.ids.jobs.to_driver(after_id),
                limit,
                created_since=created_since,
                before_id=None if before_id is None else self.ids.jobs.to_driver(before_id),
                newest_first=newest_first,
                tag=tag,
            )

        outcome = self._both(
            "list_jobs",
            lambda: self.model.list_jobs(model_filter),
            lambda: self.driver.list_jobs(driver_filter()),
        )
        if outcome is not None:
            self._compare_jobs(f"list_jobs({model_filter})", *outcome)

    @precondition(lambda self: bool(self.workflow_ids))
    @rule(
        data=st.data(),
        states=st.one_of(st.none(), st.frozensets(st.sampled_from(WorkflowState), min_size=1)),
        name=st.one_of(st.none(), st.sampled_from(WORKFLOW_NAMES)),
        limit=st.integers(1, 5),
        newest_first=st.booleans(),
    )
    def list_workflows(
        self,
        data: st.DataObject,
        states: frozenset[WorkflowState] | None,
        name: str | None,
        limit: int,
        newest_first: bool,
    ) -> None:
        bound = st.one_of(st.none(), st.sampled_from(self.workflow_ids))
        after_id, before_id = data.draw(bound, "after_id"), data.draw(bound, "before_id")
        model_filter = WorkflowFilter(states, name, after_id, before_id, limit, newest_first)

        def driver_filter() -> WorkflowFilter:
            def to_driver(workflow_id: WorkflowId | None) -> WorkflowId | None:
                return None if workflow_id is None else self.ids.workflows.to_driver(workflow_id)

            return WorkflowFilter(
                states, name, to_driver(after_id), to_driver(before_id), limit, newest_first
            )

        outcome = self._both(
            "list_workflows",
            lambda: self.model.list_workflows(model_filter),
            lambda: self.driver.list_workflows(driver_filter()),
        )
        if outcome is not None:
            expected, got = outcome
            translated = [workflow_to_model(workflow, self.ids) for workflow in got]
            what = f"list_workflows({model_filter})"
            _expect(what, sequence_differences(what, expected, translated))

    # -- requests every store must refuse ---------------------------------------

    @precondition(lambda self: bool(self.created))
    @rule(call=st.sampled_from(sorted(REFUSED_CALLS)))
    def refused_call(self, call: str) -> None:
        """A malformed call: both stores must refuse it alike and change nothing."""
        attempt = REFUSED_CALLS[call]
        job_id = self.created[-1]
        twin = self.ids.jobs.to_driver(job_id)
        if self._both(
            call, lambda: attempt(self.model, job_id), lambda: attempt(self.driver, twin)
        ):
            raise Divergence(f"{call}: accepted by both the model and the driver")

    # -- after every step ---------------------------------------------------------

    @invariant()
    def stores_agree(self) -> None:
        """Everything observable is the same in both stores, and both obey the invariants."""
        model_view = snapshot_model(self.model, self.workflow_ids)
        driver_view = snapshot_driver(self.driver, self.workflow_ids, self.ids)
        problems: list[str] = []
        for side, view in (("model", model_view), ("driver", driver_view)):
            problems += [f"{side}: {problem}" for problem in self._unexplained_changes(view)]
            graphs = (self.tolerated, self.partial)
            problems += [f"{side}: {problem}" for problem in snapshot_problems(view, *graphs)]
            problems += [f"{side}: {problem}" for problem in flow_problems(view)]
        problems += snapshot_differences(model_view, driver_view)
        _expect("after the step", problems)
        self.view = model_view
        self.pruned = None
        self.refused = False

    def _unexplained_changes(self, now: Snapshot) -> list[str]:
        """Changes since the last check that the last call cannot explain.

        The last check found both stores equal to ``self.view``, so the same
        rules apply to each.
        """
        if self.refused:
            return [
                f"the refused call changed {change}"
                for change in snapshot_differences(self.view, now, ("before", "after"))
            ]
        problems = [
            f"job {job_id} appeared without enqueue"
            for job_id in sorted(now.jobs.keys() - self.view.jobs.keys() - set(self.created))
        ]
        gone = sorted(self.view.jobs.keys() - now.jobs.keys())
        if self.pruned is None and gone:
            problems.append(f"jobs {gone} disappeared without prune")
        elif self.pruned is not None and len(gone) != self.pruned:
            problems.append(f"prune reported {self.pruned} deleted, but {gone} are gone")
        problems += [
            f"pruned job {job_id} was {self.view.jobs[job_id].state}"
            for job_id in gone
            if self.view.jobs[job_id].state not in FINISHED_JOB_STATES
        ]
        return problems


def driver_state_machine(driver_factory: DriverFactory) -> type[DriverVsModel]:
    """A state machine class comparing fresh stores of ``driver_factory`` with the model."""
    return type("DriverStateMachine", (DriverVsModel,), {"factory": _Factory(driver_factory)})


__all__ = ["DriverFactory", "DriverVsModel", "driver_state_machine"]
