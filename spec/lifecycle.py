"""The two lifecycles of the contract, as python-statemachine classes.

These classes are the single source of truth for which state changes exist.
Nothing instantiates them on a hot path: :mod:`taskharbor.spec.table` derives a
plain transition table from them once, at import, and every driver and the
engine resolve state changes through that table.  python-statemachine checks
the graph when the class is defined (every state reachable, no trap states),
and the Mermaid diagrams in ``docs/`` are generated from these classes.

Guards
------
A transition may carry a guard (``cond=``).  The transitions of one event from
one source are tried in the order written here; the first whose guards all hold
is taken.  A transition without a guard is the fallback.  A guard is one name
or several joined by ``or`` (nothing else: the table refuses other forms); a
transition may also list guards under ``unless=``, and is then taken only while
none of those holds.  The guards are
*named facts about a job*, each defined in :data:`JOB_GUARDS` below; a driver
evaluates them however suits its storage (a Python predicate, a SQL ``CASE``).
"""

from __future__ import annotations

from types import MappingProxyType

from statemachine import State, StateMachine


class JobLifecycle(StateMachine):
    """The life of one job, from enqueue to one of its ends."""

    new = State("New", initial=True)
    """Not stored yet.  The only state never persisted."""
    pending = State("Pending")
    """Waiting for the workflow steps it depends on to succeed."""
    scheduled = State("Scheduled")
    """Waiting for its ``run_at`` (enqueued with a future time, or snoozed)."""
    available = State("Available")
    """Ready to be leased by a worker."""
    running = State("Running")
    """Leased: one worker holds a fenced lease token until ``lease_expires_at``."""
    retrying = State("Retrying")
    """A failed attempt waiting for its backoff to pass (``run_at``)."""
    succeeded = State("Succeeded", final=True)
    """Finished with a result.  Final."""
    dead = State("Dead")
    """In the dead-letter queue: attempts exhausted, or a permanent error."""
    cancelled = State("Cancelled")
    """Cancelled by a user, or because a workflow step it depends on failed."""

    enqueue = (
        new.to(pending, cond="waits_on_dependencies")
        | new.to(scheduled, cond="run_at_in_future")
        | new.to(available)
    )
    """Store a new job.  Idempotency keys are checked before this event."""

    release = pending.to(scheduled, cond="run_at_in_future") | pending.to(available)
    """The last workflow step this job depends on has succeeded (for a partial step:
    has ended, however it ended)."""

    promote = scheduled.to(available) | retrying.to(available)
    """``run_at`` has come (only jobs whose ``run_at <= now`` are promoted)."""

    lease = available.to(
        running, unless=["task_at_limit", "key_at_limit", "sequence_waits", "rate_exhausted"]
    )
    """A worker takes the job: ``attempt`` += 1, a new lease token, an expiry.
    Unless one of the job's flow limits holds it back (:mod:`taskharbor.spec.flow`):
    then it stays ``available``, and the lease takes the next job instead."""

    heartbeat = running.to.itself(internal=True)  # type: ignore[no-untyped-call]
    """The lease holder extends its lease.  Fenced by the lease token."""

    succeed = running.to(succeeded)
    """The lease holder reports a result.  Fenced by the lease token."""

    fail = (
        running.to(cancelled, cond="cancel_requested")
        | running.to(dead, cond="permanent or attempts_exhausted")
        | running.to(retrying)
    )
    """The lease holder reports an error.  Fenced by the lease token."""

    snooze = running.to(cancelled, cond="cancel_requested") | running.to(scheduled)
    """The lease holder asks to run again later; the attempt is given back.
    A job somebody asked to cancel is cancelled instead of coming back."""

    lease_expired = (
        running.to(cancelled, cond="cancel_requested")
        | running.to(dead, cond="attempts_exhausted")
        | running.to(retrying)
    )
    """Rescue: the lease ran out without a report.  A failed attempt like any other:
    it counts, and the job waits in ``retrying`` for its retry policy's delay, so a
    job that kills its worker does not crash-loop through the fleet."""

    cancel = (
        pending.to(cancelled)
        | scheduled.to(cancelled)
        | available.to(cancelled)
        | retrying.to(cancelled)
        | dead.to(cancelled)
    )
    """Cancel a job that is not running.  A running job is only *asked* to stop
    (``cancel_requested``); it ends through ``fail`` or ``lease_expired``.  A dead
    job may be cancelled too: the operator takes it out of the dead-letter queue
    for good (its errors and ``finished_at`` stay; a workflow it failed stays
    ``failed``)."""

    requeue = (
        dead.to(available)
        | cancelled.to(pending, cond="waits_on_dependencies")
        | cancelled.to(available)
    )
    """Operator action: back into the queue with the attempt counter reset."""


JOB_GUARDS: MappingProxyType[str, str] = MappingProxyType(
    {
        "waits_on_dependencies": (
            "the job is a workflow step and at least one step it depends on has not succeeded"
            " (a partial step: has not ended, succeeded, dead or cancelled;"
            " a workflow's failure callback: always, its workflow moves it on)"
        ),
        "run_at_in_future": "the job's run_at is later than the driver clock's now",
        "cancel_requested": "somebody asked to cancel the job while it was running",
        "permanent": "the failure was reported as permanent (th.PermanentError)",
        "attempts_exhausted": "the job's attempt counter has reached max_attempts",
        "task_at_limit": (
            "the job carries a concurrency limit N and N or more jobs of its task are running"
        ),
        "key_at_limit": (
            "the job carries a key concurrency limit N and N or more jobs with its key "
            "(any task, any queue) are running"
        ),
        "sequence_waits": (
            "the job is in its key's sequence and an earlier sequence job of that key "
            "(smaller id) is unfinished, or dead with on-dead mode 'block'"
        ),
        "rate_exhausted": (
            "the job carries a rate limit of N starts per window and N or more jobs of its "
            "rate bucket (its task, or its key when per key) were leased in the window "
            "ending now (a start at t counts while now < t + window)"
        ),
    }
)
"""Every guard name used by :class:`JobLifecycle`, with its meaning."""


class WorkflowLifecycle(StateMachine):
    """The life of a workflow (chain, group, chord): the state of its job graph."""

    running = State("Running", initial=True)
    """At least one step is not finished, and no step is dead or cancelled."""
    succeeded = State("Succeeded", final=True)
    """Every step succeeded.  Final."""
    failed = State("Failed")
    """A step ended ``dead``; the steps depending on it were cancelled.  (A step whose
    failure a partial step absorbs does not count: see ``tolerated_steps``.)"""
    cancelled = State("Cancelled")
    """The workflow, or one of its steps, was cancelled (a tolerated step: no)."""

    finish = running.to(succeeded)
    """The last step succeeded."""

    fail = running.to(failed) | cancelled.to(failed)
    """A step ended ``dead``."""

    cancel = running.to(cancelled)
    """The workflow, or one of its steps, was cancelled."""

    resume = failed.to(running) | cancelled.to(running)
    """An operator requeued a dead or cancelled step; its dependents wait again."""


WORKFLOW_GUARDS: MappingProxyType[str, str] = MappingProxyType({})
"""The workflow lifecycle has no guards: its drivers decide by the job graph."""
