"""The driver SPI: the one interface every store implements.

This page is written for driver authors: with it, :mod:`taskharbor.spec.lifecycle`
and :mod:`taskharbor.spec.table` you can implement a driver, then prove it with
``taskharbor.conformance`` and ``taskharbor.model_tests``.  The reference model
(:mod:`taskharbor.spec.model`) is this page as executable code.

Rules that hold for every method
--------------------------------
* **Batch-first.**  Mutating methods take many items; round trips, not Python,
  bound throughput.
* **Atomic.**  Each call is one transaction: all of it happens, or (when it
  raises) none of it.  Items refused by fencing are *reported*, not raised:
  the rest of the batch is applied.
* **Validated.**  An empty batch, a mutating batch that names one job twice
  (``get`` may repeat ids), an unknown job id, a wrong type: the call raises
  :class:`~taskharbor.spec.errors.InvalidRequest` or
  :class:`~taskharbor.spec.errors.JobNotFound` and changes nothing.  When a
  call has several problems, the error raised is the first of: the request's
  shape (``InvalidRequest``), then the first unknown id (``JobNotFound``;
  not in the fenced calls, see below), then the first state the table
  refuses (``InvalidTransition``).  An instant outside ``EARLIEST_INSTANT``
  .. ``LATEST_INSTANT`` or a duration over ``MAX_DURATION_SECONDS`` is an
  ``InvalidRequest`` naming the value (``check_aware``, ``check_seconds``),
  never an ``OverflowError`` from the store.
* **Fenced.**  ``heartbeat``, ``complete``, ``fail`` and ``snooze`` apply to
  an item only while its lease is *live*: the job is ``running`` with that
  token (a lease past its expiry that was not rescued yet is still live).
  Other items are reported as ``LeaseLost.stale(job_id, token, state)``.  An
  item whose job is not stored (pruned or deleted while a worker held it) is
  a lost lease for that item only, reported as ``LeaseLost.missing(job_id,
  token)``: it never raises ``JobNotFound``, and the rest of the batch
  applies, so one missing job cannot poison a worker's every heartbeat.
* **Through the table.**  Every state change is an event of
  :class:`~taskharbor.spec.lifecycle.JobLifecycle`, resolved with
  :data:`taskharbor.spec.table.JOB` (guards evaluated on the stored job).
  An event that the table does not allow raises
  :class:`~taskharbor.spec.errors.InvalidTransition` and changes nothing.
* **Injected time.**  "now" is ``self.clock.now()`` read once per call; every
  timestamp a call writes is that value (or derived from it).  A driver's
  clock may be the database's (PostgreSQL reads ``now()`` in the call's own
  transaction), so ``driver.clock.now()`` called from outside can cost a
  round trip: callers read it rarely, and never on an event loop.
* **Ids.**  Job and workflow ids are positive ints, increasing in enqueue
  order (FIFO tie-break).  Lease tokens are unguessable non-empty strings,
  new at every lease.
* **Records.**  Methods return :class:`~taskharbor.spec.records.JobRecord` as
  stored after the call.  Every datetime a driver returns is aware and in
  UTC, exact to the microsecond.

Field effects of each event
---------------------------
The same effects are published as data in :mod:`taskharbor.spec.effects`
(``EVENT_EFFECTS``, ``STATE_EFFECTS``, ``field_effects(event, source,
target)``), and the conformance suite checks every driver against that data:
an event changes the fields named there, and no other.

=============== ==============================================================
enqueue         ``attempt=0``; ``run_at`` = request's or now; ``created_at`` = now;
                ``retry`` = the request's policy and ``flow`` = the request's
                limits, ``headers``, ``tags`` and ``meta`` the request's, all
                kept for the job's life; no ``progress``
release         ``args`` = (value of ``input``,) + args when the step has an
                input; ``run_at`` stays when it is in the future (the job
                goes to ``scheduled``), else becomes now
promote         ``run_at`` unchanged
lease           ``attempt += 1``; new ``lease_token``; ``leased_by``;
                ``lease_expires_at = now + lease_seconds``; ``progress`` cleared
heartbeat       ``lease_expires_at = now + lease_seconds``; ``progress`` = the
                lease's when it carries one (else kept)
succeed         ``result``; ``finished_at = now``; lease fields cleared
fail            an :class:`ErrorInfo` (attempt, now, report) appended to
                ``errors``; lease fields cleared; to ``retrying``:
                ``run_at = retry_at or now``; to dead/cancelled:
                ``finished_at = now``
snooze          ``attempt -= 1``; lease fields cleared; to ``scheduled``:
                ``run_at`` = requested; to ``cancelled``: ``finished_at = now``
lease_expired   ``ErrorInfo`` with ``LEASE_EXPIRED_TYPE`` and
                ``LEASE_EXPIRED_MESSAGE`` appended; lease fields
                cleared; to ``retrying``: ``run_at = now +
                retry_delay(retry, id, attempt)`` (the job's stored policy,
                :func:`taskharbor.spec.retry.retry_delay`, the same function
                the worker uses for a reported failure); to dead or
                cancelled: ``finished_at = now``
cancel          ``finished_at = now``; ``reason`` set (see below); from
                ``dead``: ``finished_at`` kept (the job finished when it
                died), errors and ``attempt`` kept as ever
requeue         ``attempt = 0``; ``run_at = now``; ``cancel_requested``,
                ``finished_at``, ``reason`` and ``result`` cleared; errors
                kept; a workflow step's ``args`` go back to the step's own
                args, with its input put in front again when it goes
                straight to ``available``
=============== ==============================================================

Retry policies: every job carries the :class:`~taskharbor.spec.retry.RetryPolicy`
it was enqueued with (``EnqueueRequest.retry``, default ``DEFAULT_RETRY``), and
returns it unchanged in ``JobRecord.retry``.  ``rescue`` computes a rescued
job's wait with :func:`~taskharbor.spec.retry.retry_delay` (a pure function of
policy, job id and attempt: compute it in the driver's language, never
re-implement it in SQL), exactly as the worker computes ``retry_at`` for a
reported failure.

Cancellation reasons (constants in :mod:`taskharbor.spec.records`):
``CANCELLED_BY_REQUEST`` for :meth:`Driver.cancel`, directly or for a running
job that then ends through ``fail``/``snooze``/``lease_expired`` after the
request; ``WORKFLOW_CANCELLED`` for :meth:`Driver.cancel_workflow`, directly
or for a running step that then ends that way; ``dependency_reason(job_id,
state)`` for workflow cascades (a cascade never reaches a running step: a step
that depends on an unfinished one is pending or finished).

The rule for running jobs: ``cancel_workflow`` sets ``cancel_requested`` on a
running step *and* records ``reason = WORKFLOW_CANCELLED`` on it at once;
``cancel`` only sets ``cancel_requested`` and leaves ``reason`` alone.  An event
out of ``running`` that ends ``cancelled`` keeps a recorded reason, else sets
``CANCELLED_BY_REQUEST``; any other event out of ``running`` (``succeed``, or
an attempt that was never asked to stop) clears it.  So the workflow-level
reason wins whichever of the two requests came first.  ``reason`` is therefore
set exactly on ``cancelled`` jobs and on ``running`` steps whose workflow was
cancelled.

"Lease fields" are ``lease_token``, ``lease_expires_at`` and ``leased_by``;
they are set exactly while the job is ``running``.  ``cancel_requested`` is
cleared whenever a job leaves ``running``.

Workflows
---------
A workflow is a graph of jobs (steps) written by one :meth:`Driver.enqueue_workflow`
call.  Steps with no dependencies are enqueued at once; the others are
``pending``.  A graph may carry an ``idempotency_key`` (capability
``workflow_idempotency``): while a stored workflow holds it, the call stores
nothing and returns that workflow, so a producer that retries, or two that
race, create one workflow; pruning the workflow frees its key.

These effects are part of the call that causes them, in the same transaction:

* A step **succeeds**: each ``pending`` step of the same workflow all of whose
  dependencies have now succeeded gets ``release`` (its input resolved from
  the stored results).  Exactly one call observes "the last dependency
  succeeded", even when several finish at the same instant.
* A step ends **dead or cancelled**: every ``pending`` step that depends on
  it, directly or not, gets ``cancel`` with
  ``reason = dependency_reason(<that step's job id>, <its state>)``.  (Steps
  that depend on an unfinished step are always ``pending`` or finished.)
* A step is **requeued**: every ``cancelled`` step of the workflow is requeued
  too (``pending`` again while it waits on dependencies).  The call's items of
  one workflow and its cancelled steps are requeued in job id order, a step
  after the steps it depends on, so a step (a partial one too) waits for every
  dependency the same call brings back, whichever of them the call names.
* After any of these the workflow's state is derived from its steps that
  count (all but the tolerated ones, "Partial steps" below): any ``dead`` ->
  ``failed``; else any ``cancelled`` -> ``cancelled``, but a ``failed``
  workflow stays ``failed``; else every one ``succeeded`` -> ``succeeded``;
  else ``running`` (:func:`~taskharbor.spec.table.derive_workflow_state` with
  its current state).  So cancelling a dead step (taking it out of the
  dead-letter queue) leaves its workflow ``failed``: the failure happened, and
  its failure callback has been released with it, never to be cancelled by it.
  Its dependents were cancelled when it died; any that a requeue made
  ``pending`` again are cancelled with it, as for any step that ends
  cancelled.  A change goes
  through :data:`taskharbor.spec.table.WORKFLOW` (``event_for``), and sets
  ``finished_at`` (now) when the new state is not ``running``, clears it
  otherwise.

Partial steps (capability ``partial_chords``): a step with ``StepSpec.partial``
(a chord's callback run over the members that succeeded) waits until every
step it depends on has *ended*: its ``waits_on_dependencies`` fact is "a step
it depends on is not ``succeeded``, ``dead`` or ``cancelled``".  So:

* the cascade of a step ending dead or cancelled does not enter a partial step
  (nor pass through it to the steps after it);
* at the end of a call that ended steps of a workflow (succeed, fail, rescue,
  cancel, the cascade; like the failure callback's move, after every item),
  each ``pending`` partial step of that workflow that no longer waits gets
  ``release``, once: exactly one call observes its last dependency end, even
  when several end at the same instant in different calls (so ``cancel`` of a
  member and of the partial step in one call cancels the step, unreleased);
* ``release`` puts the two values of :func:`~taskharbor.spec.records.partial_input`
  in front of its own args when it has an ``input``: the input's results with
  the steps that did not succeed left out, then their ``member_failure`` list
  (``requeue`` straight to ``available`` rebuilds them from the stored steps).

The graph's *tolerated* steps (:func:`~taskharbor.spec.records.tolerated_steps`:
those whose every dependent is partial or tolerated) do not count when the
workflow's state is derived, so a member that dies leaves its workflow
``running`` until the partial step has run, and a workflow whose partial step
and other counted steps succeed ``succeeded`` whatever its tolerated steps did
(its failure callback is then cancelled, never called).  A failure callback
hears about the first *counted* step that ended dead in the call.  Requeue of
a tolerated step works as for any step while the workflow is unfinished (a
partial step still pending waits for it again); once the workflow has
``succeeded``, the step is requeued alone (no other job of the workflow is
touched) and the workflow's state no longer changes.

Failure callbacks (capability ``failure_callbacks``).  A graph's ``on_failure``
request is stored by the same ``enqueue_workflow`` call as the steps' jobs,
after them (the next job id), as a job of the workflow (``workflow_id`` set,
no ``depends_on``) that is *not* one of its ``steps``: it never counts when
the workflow's state is derived.  The record's ``on_failure`` holds its id.
For a callback the ``waits_on_dependencies`` fact is always true, so it is
enqueued ``pending``, and it leaves ``pending`` only through its workflow, at
the end of a call that changed the workflow's state, by the state the call
leaves the workflow in (however many states its items took it through):

* the workflow ends the call ``failed`` while the callback is ``pending``: the
  callback gets ``release``, with ``step_failure(workflow id, step)`` put in
  front of its own args, where ``step`` is the first step (in the order the
  call applied its items; ``rescue`` applies them by ascending id) that ended
  ``dead`` in this call;
* the workflow ends the call ``succeeded`` or ``cancelled`` while the
  callback is ``pending``: the callback gets ``cancel`` with ``reason =
  WORKFLOW_SUCCEEDED`` or ``WORKFLOW_CANCELLED``.

So a workflow that fails after it was cancelled does not call it.  Otherwise
the callback is a job of the workflow like its steps: ``cancel_workflow``
cancels it (or asks it to stop), and a requeued step requeues it with the
workflow's other cancelled jobs (back to ``pending``, its own args).  Two
steps of one workflow ending ``dead`` at the same instant in different calls
release the callback once: the calls serialise on the workflow, and only the
first sees it change to ``failed``.  Once released it is an ordinary job
(retried, ``dead``, requeued with its failure still in front of its args,
and leased under the flow limits its request carries, as any job is);
its own end never changes the workflow's state.  Prune deletes it with its
workflow.

Failures of the store
---------------------
* **Refused or transient.**  An error is a *refusal* when
  :func:`~taskharbor.spec.errors.is_refusal` says so: every
  ``TaskHarborError`` but a :class:`~taskharbor.spec.errors.StoreError`
  (bad input, an unknown job, a transition the table forbids).  Sending the
  same call again cannot help, and the worker drops a report refused this
  way.  Everything else is *transient*: raise a lost connection, a timeout, a
  locked or full store as ``StoreError`` (naming the store, never a
  password), or let the client library's own exception through, and the
  worker sends the call again (backing off) until the report's lease could no
  longer be live.  Never raise a transient failure as another
  ``TaskHarborError``: its report would be lost.
* **A lost reply.**  When the connection drops while a commit is in flight,
  the call may or may not have applied, and the driver cannot tell: raise a
  transient error all the same.  Sending it again is safe for every call: a
  report that did apply is answered with ``LeaseLost.stale`` (the job is no
  longer running under that token), which the worker logs and drops; a lease
  whose reply was lost hands its jobs to nobody, and ``rescue`` brings them
  back when the lease expires; ``cancel`` and ``requeue`` of a job they
  already moved raise ``InvalidTransition``.  Only ``enqueue`` may store a
  job twice: a producer that retries gives an ``idempotency_key``.
* **Data it cannot read.**  A stored job whose data the driver cannot decode
  (a payload that is not JSON of the right shape, after a hand edit or a
  disk error) is :class:`~taskharbor.spec.errors.CorruptJob` naming the job.
  ``lease`` sends such a job to ``dead`` at once (event ``fail``,
  ``permanent``, with an error of type
  :data:`~taskharbor.spec.errors.CORRUPT_JOB_TYPE` whose message names it)
  and hands out the rest of the batch; ``get`` and ``list_jobs`` raise
  ``CorruptJob`` when they reach it; ``rescue``, ``promote`` and ``count``
  need no payload and never stop on it.  A job in a state no version writes
  is never leased, and ``get``, ``list_jobs`` and ``count`` raise
  ``CorruptJob`` naming it.  (The conformance suite tests a damaged payload
  through the ``plant_corrupt_job`` hook.)

Durability and time
-------------------
* **persistent** means a call that returned survives the crash of any
  process that uses the store, and of the server of a server store.  The
  calls that carry a person's intent (``enqueue``, ``enqueue_workflow``,
  ``cancel``, ``cancel_workflow``, ``requeue``) must be on stable storage when
  they return (an fsync per call: PostgreSQL's default ``synchronous_commit =
  on``; Redis only with ``appendfsync always``).  The worker's calls
  (``lease``, ``heartbeat``, ``complete``, ``fail``, ``snooze``, ``promote``,
  ``rescue``, ``prune``) may be flushed later, say once per second, because a
  crash that undoes the last of them only makes work happen again, which
  at-least-once delivery allows; a crash must leave the store as it was after
  some call, never half of one.  A store that may lose an acknowledged enqueue
  (Redis with ``appendfsync everysec``) is not ``persistent``.
* **One clock per store.**  A store shared by several hosts should take
  "now" from its server (PostgreSQL ``now()`` in the call's transaction,
  Redis ``TIME`` in the script), not from each worker's machine: with the
  hosts' clocks apart, one worker would see a live lease as expired and
  rescue it, another would keep a dead one.  The ``clock`` argument stays
  for tests (a ``FakeClock``); make the server's clock the default.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .clock import Clock
from .errors import InvalidRequest, LeaseLost
from .history import FinishedCount
from .queues import QueueRecord
from .records import (
    PRUNED_BY_DEFAULT,
    Completion,
    EnqueueRequest,
    EnqueueResult,
    Failure,
    HeartbeatResult,
    JobFilter,
    JobId,
    JobRecord,
    LeaseRef,
    PromoteResult,
    SnoozeRequest,
    WorkflowFilter,
    WorkflowGraph,
    WorkflowId,
    WorkflowRecord,
    wait_timeout,
)
from .records import job_ids as job_ids_of
from .schedules import Schedule, ScheduleRecord, TickResult
from .table import JobState
from .workers import WorkerInfo, WorkerRecord


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Optional abilities a driver declares; the conformance suite adapts to them.

    ``persistent``: jobs survive the process, and a server store's server
    (see "Durability and time" above; the crash harness applies).
    ``multi_process``: several processes may share the store safely.
    ``transactional_enqueue``: :meth:`Driver.enqueue_in` and
    :meth:`Driver.enqueue_workflow_in` enqueue inside the caller's own
    database transaction.
    ``notifications``: :meth:`Driver.wait_for_jobs` wakes up, from any
    process, on every transition into ``available`` (enqueue, release,
    promote, requeue) instead of only polling, and
    :meth:`Driver.wait_for_finished` on every transition into a finished state.
    ``schedules``: the store keeps periodic schedules (the "Schedules" calls
    of :class:`Driver`); without it those calls raise ``NotImplementedError``.
    ``flow_control``: the store keeps each job's ``flow`` limits and enforces them
    as the guards of ``lease`` (:mod:`taskharbor.spec.flow`).  A store without it
    is never given limits: the engine refuses them first (``InvalidRequest``
    naming the store), so no limit is silently ignored.
    ``failure_callbacks``: :meth:`Driver.enqueue_workflow` stores a graph's
    ``on_failure`` job ("Failure callbacks" under "Workflows" above); without
    it the engine refuses such a workflow before it reaches the driver.
    ``workflow_idempotency``: :meth:`Driver.enqueue_workflow` honours a graph's
    ``idempotency_key`` ("Workflows" above); without it the engine refuses a
    keyed workflow before it reaches the driver.
    ``queue_pause``: the store keeps paused queues (the "Queues" calls of
    :class:`Driver`, :mod:`taskharbor.spec.queues`) and ``lease`` leaves their
    jobs alone; without it those calls raise ``NotImplementedError``.
    ``partial_chords``: :meth:`Driver.enqueue_workflow` honours a step's
    ``partial`` flag ("Partial steps" under "Workflows" above); without it the
    engine refuses such a workflow before it reaches the driver.
    ``workers``: the store keeps the workers registry (the "Workers" calls of
    :class:`Driver`, rules in :mod:`taskharbor.spec.workers`), and ``heartbeat``
    marks the workers holding the leases it extends as seen; without it those
    calls raise ``NotImplementedError`` and the engine does not register.
    ``job_metadata``: the store keeps each job's ``tags`` and ``meta``, selects
    by ``JobFilter.tag``, and stores the ``progress`` a heartbeat carries
    (:mod:`taskharbor.spec.metadata`); the engine gives a store without it none
    of them (tags or meta at enqueue are refused with ``InvalidRequest`` naming
    the store, progress stays in the worker).
    ``key_scopes``: :meth:`Driver.enqueue` honours a request's ``key_scope``
    (:mod:`taskharbor.spec.keys`) and returns each job's scope; a store without
    it is only given the default scope (until pruned): the engine refuses any
    other first (``InvalidRequest`` naming the store).
    ``finished_counts``: :meth:`Driver.finished_per_minute` answers how many jobs
    finished per minute, queue and outcome (:mod:`taskharbor.spec.history`) from
    an index or counters it keeps, never by reading every job; without it the
    call raises ``NotImplementedError`` (a dashboard then samples ``count()``).
    """

    persistent: bool = False
    multi_process: bool = False
    transactional_enqueue: bool = False
    notifications: bool = False
    schedules: bool = False
    flow_control: bool = False
    failure_callbacks: bool = False
    workflow_idempotency: bool = False
    queue_pause: bool = False
    workers: bool = False
    partial_chords: bool = False
    job_metadata: bool = False
    key_scopes: bool = False
    finished_counts: bool = False


class Driver(abc.ABC):
    """A job store that obeys the TaskHarbor contract.

    Implementations must be safe to call from several threads at once.
    """

    capabilities: Capabilities = Capabilities()
    clock: Clock

    # -- lifecycle of the store ---------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the store's schema.  Idempotent.  Default: nothing."""

    def close(self) -> None:
        """Release connections and files.  Default: nothing."""

    # -- producing ----------------------------------------------------------

    @abc.abstractmethod
    def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[EnqueueResult]:
        """Store new jobs (event ``enqueue``), one result per request, in order.

        A request whose ``idempotency_key`` is held by a stored job stores
        nothing and returns that job, the holder, as stored, with
        ``created=False``; so does a repeat of a key earlier in the same batch
        (the first request's job holds it).  How long a job holds its key is its
        request's ``key_scope`` (:mod:`taskharbor.spec.keys`, capability
        ``key_scopes``): until pruned (the default: any state), while unfinished,
        or for a window from its enqueue (held while ``now < created_at +
        seconds``, with the call's one ``now``).  A request whose key's last
        holder no longer holds it stores a new job, which takes the key; the
        older job gives it up for good (a requeue brings it back without the
        key, whatever job holds the key then).  The holder's scope decides, not
        the new request's.
        Raises ``InvalidRequest`` for an empty batch or a non-request item.
        """

    def enqueue_in(self, conn: Any, requests: Sequence[EnqueueRequest]) -> list[EnqueueResult]:
        """:meth:`enqueue` inside the caller's own open transaction on ``conn``.

        For drivers with the ``transactional_enqueue`` capability; ``conn`` is
        a connection of the store's own client library (a psycopg connection
        for PostgreSQL) on which the caller has a transaction open.  Nothing
        is committed here: the jobs exist once the caller commits, never if
        it rolls back, and no other connection sees them before that commit
        (workers are woken then).  The rules of :meth:`enqueue` hold
        (validation, idempotency keys, one result per request).  In a
        caller's REPEATABLE READ or SERIALIZABLE transaction, a key whose
        holder committed after the caller's snapshot raises the store's
        serialization error (PostgreSQL's ``SerializationFailure``), never a
        result the snapshot could not explain: retry the whole transaction,
        and the retry finds the holder.  Default:
        ``InvalidRequest`` naming the missing capability.
        """
        raise InvalidRequest(_NOT_TRANSACTIONAL.format(type(self).__name__))

    @abc.abstractmethod
    def enqueue_workflow(self, graph: WorkflowGraph) -> WorkflowRecord:
        """Store a whole workflow graph at once (see "Workflows" above).

        Jobs are created in step order (so job ids follow the step indexes);
        the record's ``steps`` lists their ids, its ``result`` is the graph's
        result ref with step indexes replaced by job ids.

        With ``workflow_idempotency``: a graph whose ``idempotency_key`` is
        held by a stored workflow (any state, until pruned) stores nothing
        and returns that workflow as stored now, whatever its steps; two
        calls with one key at the same instant store one workflow, and both
        return it.  The record keeps the key (``WorkflowRecord.idempotency_key``).
        """

    def enqueue_workflow_in(self, conn: Any, graph: WorkflowGraph) -> WorkflowRecord:
        """:meth:`enqueue_workflow` inside the caller's own open transaction on ``conn``.

        For drivers with the ``transactional_enqueue`` capability, as
        :meth:`enqueue_in`: the workflow and every step exist once the caller
        commits, never if it rolls back, and no other connection sees any of
        them before that commit.  With ``workflow_idempotency``, a key held by
        a workflow the caller's transaction can see returns that workflow; a
        store whose isolation cannot tell (a holder committed after the
        caller's snapshot) raises its own serialization error, and the
        caller's transaction, retried, finds the holder.  Default:
        ``InvalidRequest`` naming the missing capability.
        """
        raise InvalidRequest(_NOT_TRANSACTIONAL.format(type(self).__name__))

    # -- consuming (fenced by lease tokens) -----------------------------------

    @abc.abstractmethod
    def lease(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker_id: str,
    ) -> list[JobRecord]:
        """Lease up to ``limit`` ``available`` jobs of ``queues`` (event ``lease``).

        Order: ``priority`` descending, then ``run_at`` ascending, then id
        ascending.  A job whose flow limits hold it back (guards ``unless`` of
        ``lease``: :mod:`taskharbor.spec.flow`) is passed over and stays
        ``available``; the guards are evaluated job by job in that order, counting
        the jobs this same call has leased before it, and atomically with every
        other lease (two workers never both take the last slot of a limit).
        A leased job with a rate limit records its start in its rate bucket.
        Two concurrent calls never return the same job.  Only
        ``available`` jobs are leased: due ``scheduled``/``retrying`` jobs wait
        for :meth:`promote`.  ``limit`` >= 1; ``queues`` non-empty.  A store
        with the ``queue_pause`` capability leases no job of a queue that is
        paused when the call begins (:mod:`taskharbor.spec.queues`).
        """

    @abc.abstractmethod
    def heartbeat(self, leases: Sequence[LeaseRef], lease_seconds: float) -> HeartbeatResult:
        """Extend live leases (event ``heartbeat``).

        A lease is live when the job is ``running`` with that token (an expired
        lease that was not rescued yet is still live).  Others are reported in
        ``lost``.  ``cancel_requested`` lists the live ones somebody asked to cancel.
        With the ``job_metadata`` capability, a live lease's ``progress`` (when
        given) is stored as the job's; a refused lease's is not.
        With the ``workers`` capability, every registered worker that holds one of
        the live leases (``leased_by``) is marked as seen, in the same call.
        """

    @abc.abstractmethod
    def complete(self, completions: Sequence[Completion]) -> list[LeaseLost]:
        """Record results (event ``succeed``), then release workflow dependents.

        Returns the refused items (lease not live), in request order; the
        others are applied.
        """

    @abc.abstractmethod
    def fail(self, failures: Sequence[Failure]) -> list[LeaseLost]:
        """Record failed attempts (event ``fail``; guards: ``cancel_requested``,
        ``permanent``, ``attempts_exhausted`` = attempt >= max_attempts, the
        attempt counter as it is while running).

        Returns the refused items, in request order.
        """

    @abc.abstractmethod
    def snooze(self, requests: Sequence[SnoozeRequest]) -> list[LeaseLost]:
        """Put jobs back to ``scheduled`` at a later time (event ``snooze``).

        Returns the refused items, in request order.
        """

    # -- operators ------------------------------------------------------------

    @abc.abstractmethod
    def cancel(self, job_ids: Sequence[JobId]) -> list[JobRecord]:
        """Cancel jobs (event ``cancel``); a ``running`` job only gets
        ``cancel_requested = True`` (its worker sees it at the next heartbeat).

        A job already ``running`` with ``cancel_requested`` is left as it is.
        A ``dead`` job is cancelled (out of the dead-letter queue for good: its
        errors, ``attempt`` and ``finished_at`` kept; a workflow it failed stays
        ``failed``).  A ``succeeded`` or ``cancelled`` job raises
        ``InvalidTransition``; the whole call then changes nothing.  Items
        apply in order; a job that an earlier item's workflow cascade already
        cancelled in this call is left as it is.
        """

    @abc.abstractmethod
    def requeue(self, job_ids: Sequence[JobId]) -> list[JobRecord]:
        """Move ``dead`` or ``cancelled`` jobs back into the queue (event ``requeue``).

        Any other state raises ``InvalidTransition`` and the call changes nothing.
        Items apply in order; a step that an earlier item's workflow already
        requeued in this call is left as it is.  A requeued job holds its
        idempotency key again as its scope says, unless it gave the key up to a
        newer job (:mod:`taskharbor.spec.keys`): then it runs without it.
        """

    # -- maintenance (safe to run from every worker at once) ------------------

    @abc.abstractmethod
    def promote(self) -> PromoteResult:
        """Event ``promote`` for every ``scheduled``/``retrying`` job with ``run_at <= now``.

        ``next_due`` is the earliest ``run_at`` still in the future, if any.
        """

    @abc.abstractmethod
    def rescue(self) -> list[JobId]:
        """Event ``lease_expired`` for every ``running`` job with
        ``lease_expires_at <= now``.  Returns their ids, ascending."""

    @abc.abstractmethod
    def prune(
        self,
        finished_before: datetime,
        states: Collection[JobState] = PRUNED_BY_DEFAULT,
        *,
        dry_run: bool = False,
    ) -> int:
        """Delete finished jobs in ``states`` (by default ``succeeded`` and
        ``cancelled``: the dead-letter queue stays until an operator requeues it
        or names ``dead``) whose ``finished_at`` is earlier than
        ``finished_before``; returns how many.  ``states`` must be a non-empty
        set of finished states (``check_prune_states``).  With ``dry_run`` the
        call deletes nothing and returns how many it would delete.

        A workflow's steps are deleted only together with the workflow, when
        the workflow is finished (``succeeded``, ``cancelled`` or ``failed``)
        and every one of its steps qualifies.  Deleted jobs free their
        idempotency keys.

        The one exception to "each call is one transaction": a store may
        delete in batches, each atomic (a workflow with all its steps in one),
        so a long backlog does not hold locks; a crash mid-way leaves some
        batches deleted, and calling again finishes the work.
        """

    # -- reading --------------------------------------------------------------

    @abc.abstractmethod
    def get(self, job_ids: Sequence[JobId]) -> list[JobRecord]:
        """The jobs, in the order asked; ``JobNotFound`` names the first missing id."""

    @abc.abstractmethod
    def list_jobs(self, where: JobFilter) -> list[JobRecord]:
        """Jobs matching ``where``, by ascending id (descending when
        ``where.newest_first``), at most ``where.limit``: the first ones in that
        order, so ``newest_first`` with a limit gives the newest jobs.

        Every field of ``where`` that is given must match: ``states`` (any of
        them), ``task``, ``queue``, ``workflow_id``, ``after_id`` (ids greater
        than it), ``before_id`` (ids smaller than it) and ``created_since``
        (``created_at >= created_since``: the bound is inclusive, an instant
        in any timezone) and ``tag`` (jobs whose ``tags`` hold it; a store
        answers it from an index or a structure it maintains, not by reading
        every job).  Compare
        ``created_at`` itself, never an id derived from it: ids increase in
        enqueue order, but ``created_at`` is each call's now, which need not
        increase with them (two transactions at once, a clock set back).
        """

    @abc.abstractmethod
    def count(self) -> Mapping[tuple[str, JobState], int]:
        """How many jobs per (queue, state); pairs with no job are left out."""

    @abc.abstractmethod
    def get_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        """The workflow; ``WorkflowNotFound`` if there is none."""

    @abc.abstractmethod
    def list_workflows(self, where: WorkflowFilter) -> list[WorkflowRecord]:
        """Workflows matching ``where``, by ascending id (descending when
        ``where.newest_first``), at most ``where.limit``, each as
        :meth:`get_workflow` returns it.

        Every field of ``where`` that is given must match: ``states`` (any of
        them), ``name`` (equal), ``after_id`` (ids greater than it) and
        ``before_id`` (ids smaller than it).  Raises ``InvalidRequest`` for
        anything but a :class:`~taskharbor.spec.records.WorkflowFilter`.
        """

    @abc.abstractmethod
    def cancel_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        """Cancel every step not finished yet (event ``cancel`` with reason
        ``WORKFLOW_CANCELLED``; running ones get ``cancel_requested`` and
        ``reason = WORKFLOW_CANCELLED``, kept when their cancel resolves); the
        workflow's state is then derived as above.  A workflow already
        ``succeeded`` raises ``InvalidTransition``."""

    def finished_per_minute(
        self, since: datetime, *, queue: str | None = None
    ) -> list[FinishedCount]:
        """How many jobs finished per UTC minute, queue and outcome, from ``since`` on
        (capability ``finished_counts``; the rules are in :mod:`taskharbor.spec.history`).

        Every stored job in a finished state (``FINISHED_OUTCOMES``) with
        ``finished_at >= since``, grouped by the minute of its ``finished_at``, its
        queue and its state as it is now; only ``queue``'s jobs when given.  By
        minute, queue, then state (by name); no empty bucket.  Reads now once:
        ``InvalidRequest`` (``check_history_since``) for a ``since`` that is not an
        aware datetime, not the start of a UTC minute, later than now or more than
        ``MAX_HISTORY`` before it, and for a ``queue`` that is not a queue name.
        The store answers from an index over ``finished_at`` or counters it keeps
        in step with every finishing call, requeue, cancel and prune: the cost
        follows the finished jobs (or minutes) of the window, not the store's size.
        """
        raise NotImplementedError(_NO_FINISHED_COUNTS.format(type(self).__name__))

    # -- waiting --------------------------------------------------------------

    def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Block until jobs may be available on ``queues`` or ``timeout`` passes.

        A hint only: returning early is always allowed.  Drivers with the
        ``notifications`` capability wake, whichever process made the change,
        on every transition into ``available`` of a job of ``queues``: an
        enqueue, a workflow step's release, and the ``promote``, ``rescue``
        and ``requeue`` that make a job ready (the conformance suite tests
        each).  Jobs of a paused queue are not ready: a driver that returns as
        soon as it sees ready jobs leaves them out, so that a worker on a paused
        queue waits instead of asking again and again.  The default sleeps
        ``timeout`` seconds (the worker polls).
        """
        import time

        time.sleep(max(0.0, timeout))

    def wait_for_finished(self, job_ids: Sequence[JobId], timeout: float) -> None:
        """Block until one of ``job_ids`` may have finished, or ``timeout`` passes.

        A hint, as :meth:`wait_for_jobs`: the caller reads the jobs again when it
        returns (``App.wait`` and ``WorkflowHandle.wait`` do; a workflow ends
        only in a call that finishes one of its steps, so its waiter names the
        steps it saw unfinished).  Drivers with the ``notifications``
        capability, whichever process or connection made the change:

        * return at once when one of the jobs is finished (``succeeded``,
          ``dead`` or ``cancelled``) or not stored when the call begins, so a
          job that finished between the caller's read and this call is never
          waited for;
        * else wake soon after one of them enters a finished state, by any
          call: ``complete``, ``fail``, ``snooze``, ``cancel``,
          ``cancel_workflow``, ``rescue``, and the cascades and failure
          callbacks of a workflow (the conformance suite tests each);
        * else return when ``timeout`` passes; earlier only on a rare event of
          the store (a notification connection lost and found again), never
          at once over and over, which would make the caller spin.

        A notification costs the finishing call little: one per call, naming
        the jobs it finished (or, for a store that cannot name every job a
        cascade finished, their workflows), and never one per job.
        ``InvalidRequest`` for an empty batch, an id that is not a job id, or a
        ``timeout`` that is not a number (``wait_timeout``); ids may repeat.
        The default sleeps ``timeout`` seconds (the caller polls).
        """
        import time

        job_ids_of(job_ids, "wait_for_finished", distinct=False)
        time.sleep(wait_timeout(timeout, "wait_for_finished"))

    # -- schedules (capability ``schedules``; see taskharbor.spec.schedules) ---
    #
    # One job per (schedule name, tick instant), whatever the number of
    # callers: enqueue_due_ticks moves each schedule's cursor forward past the
    # ticks it handles and stores their jobs in the same transaction, each job
    # keyed by spec.schedules.tick_key.  Every rule (sync, pause, the ticks a
    # call runs) is a pure function of spec.schedules applied to the stored
    # record with the call's now.  Unknown names raise ScheduleNotFound (the
    # first one, in the order given) and change nothing.

    def sync_schedules(self, schedules: Sequence[Schedule]) -> list[ScheduleRecord]:
        """Store the schedules code declares, by name (``schedules.synced``); records in order.

        Stored schedules not named stay as they are (an operator sees them as
        stale and may drop them).  ``InvalidRequest`` for an empty batch, a
        non-``Schedule`` item or a name given twice.
        """
        raise NotImplementedError(_NO_SCHEDULES.format(type(self).__name__))

    def enqueue_due_ticks(self, names: Sequence[str]) -> TickResult:
        """Enqueue the due ticks of the named schedules, atomically (``schedules.plan_ticks``).

        For each schedule: the plan's jobs are enqueued as ``enqueue`` would
        (a key already held creates nothing), the cursor becomes the plan's,
        and ``last_job_id`` the last planned job (held or created).
        ``previous_unfinished`` is whether ``last_job_id`` names a stored job
        in a state that is not finished, read in the same transaction.
        """
        raise NotImplementedError(_NO_SCHEDULES.format(type(self).__name__))

    def list_schedules(self) -> list[ScheduleRecord]:
        """Every stored schedule, by name."""
        raise NotImplementedError(_NO_SCHEDULES.format(type(self).__name__))

    def pause_schedules(self, names: Sequence[str], paused: bool) -> list[ScheduleRecord]:
        """Pause (``paused=True``) or resume schedules (``schedules.resumed``); records in order."""
        raise NotImplementedError(_NO_SCHEDULES.format(type(self).__name__))

    def run_schedule(self, name: str) -> JobRecord:
        """Enqueue one job of the schedule now (``schedules.run_request``), paused or not.

        It becomes the schedule's ``last_job_id``; the cursor does not move.
        """
        raise NotImplementedError(_NO_SCHEDULES.format(type(self).__name__))

    def drop_schedules(self, names: Sequence[str]) -> None:
        """Delete stored schedules (their jobs stay).  A worker that still
        declares one stores it again, afresh, at its next sync."""
        raise NotImplementedError(_NO_SCHEDULES.format(type(self).__name__))

    # -- queues (capability ``queue_pause``; see taskharbor.spec.queues) -------

    def pause_queues(self, queues: Sequence[str], paused: bool) -> list[QueueRecord]:
        """Pause (``paused=True``) or resume queues, atomically (``queues.paused_record``).

        Returns each queue's record after the call, in the order given.
        ``InvalidRequest`` for an empty batch, a name that is not a queue name
        or is given twice, or a ``paused`` that is not a bool.  Once it
        returns, no ``lease`` that begins afterwards hands out a job of a
        queue it paused; ``enqueue`` and ``promote`` go on as before.
        """
        raise NotImplementedError(_NO_QUEUE_PAUSE.format(type(self).__name__))

    def paused_queues(self) -> list[QueueRecord]:
        """The record of every paused queue, by name."""
        raise NotImplementedError(_NO_QUEUE_PAUSE.format(type(self).__name__))

    # -- workers (capability ``workers``; rules in taskharbor.spec.workers) ----------
    #
    # Each call reads now once; register_workers, heartbeat_workers and
    # deregister_workers first forget the workers unseen for twice their
    # ttl_seconds (spec.workers.is_forgotten).  With the capability, heartbeat
    # also sets last_seen_at = now on the registered workers named by the
    # leased_by of the live leases it extends, in the same transaction.

    def register_workers(self, workers: Sequence[WorkerInfo]) -> list[WorkerRecord]:
        """Store each worker by id, replacing a known one (``started_at = last_seen_at =
        now``); records in order.  ``InvalidRequest`` for an empty batch, a
        non-``WorkerInfo`` item or an id given twice (``spec.workers.check_workers``)."""
        raise NotImplementedError(_NO_WORKERS.format(type(self).__name__))

    def heartbeat_workers(self, worker_ids: Sequence[str]) -> list[str]:
        """Mark the named workers as seen (``last_seen_at = now``); returns the ids that
        are not stored (never registered, or forgotten), in the order given."""
        raise NotImplementedError(_NO_WORKERS.format(type(self).__name__))

    def deregister_workers(self, worker_ids: Sequence[str]) -> None:
        """Delete the named workers (a clean stop); ids not stored are ignored."""
        raise NotImplementedError(_NO_WORKERS.format(type(self).__name__))

    def list_workers(self) -> list[WorkerRecord]:
        """Every stored worker by id, gone ones too, each with the ids of the running
        jobs it holds (ascending) and ``gone`` as of now.  Changes nothing."""
        raise NotImplementedError(_NO_WORKERS.format(type(self).__name__))


_NO_SCHEDULES = "{} does not declare capability 'schedules'"
_NOT_TRANSACTIONAL = (
    "{} does not declare capability 'transactional_enqueue': "
    "it cannot enqueue inside the caller's transaction"
)
_NO_QUEUE_PAUSE = "{} does not declare capability 'queue_pause'"
_NO_WORKERS = "{} does not declare capability 'workers'"
_NO_FINISHED_COUNTS = "{} does not declare capability 'finished_counts'"
