"""Errors of the contract.  Each message names the job and the states involved."""

from __future__ import annotations

from collections.abc import Iterable


class TaskHarborError(Exception):
    """Base class of every error TaskHarbor raises on purpose."""


class InvalidRequest(TaskHarborError, ValueError):
    """Bad input to the SPI or the API: nothing was changed."""


class JobNotFound(TaskHarborError, LookupError):
    """No stored job has this id (never stored, or pruned)."""

    def __init__(self, job_id: object) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} not found (never enqueued, or pruned)")


class WorkflowNotFound(TaskHarborError, LookupError):
    """No stored workflow has this id."""

    def __init__(self, workflow_id: object) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"workflow {workflow_id!r} not found (never enqueued, or pruned)")


class InvalidTransition(TaskHarborError):
    """An event that the spec's transition table does not allow from this state."""

    def __init__(
        self,
        kind: str,
        subject: object,
        event: str,
        state: str,
        allowed_from: Iterable[str],
    ) -> None:
        self.kind = kind
        self.subject = subject
        self.event = event
        self.state = state
        self.allowed_from = frozenset(allowed_from)
        who = f"{kind} {subject!r}" if subject is not None else kind
        allowed = ", ".join(sorted(self.allowed_from)) or "nowhere"
        super().__init__(
            f"{who} is {state}: '{event}' is not allowed from {state} (only from: {allowed})"
        )

    @classmethod
    def workflow_finished(cls, workflow_id: object, state: str) -> InvalidTransition:
        """``cancel_workflow`` of a workflow whose state is final: the one way
        drivers build this refusal, so that every driver says the same.

        It names as ``allowed_from`` every workflow state that is not final
        (a ``failed`` or ``cancelled`` workflow may still have steps to cancel).
        """
        from .table import WORKFLOW, WorkflowEvent  # the table imports this module

        allowed = set(WORKFLOW.states) - WORKFLOW.final_states
        return cls(WORKFLOW.kind, workflow_id, WorkflowEvent.CANCEL, state, allowed)


MISSING_JOB_STATE = "missing"
"""``LeaseLost.state`` of a fenced item whose job is no longer stored (not a job state)."""


class LeaseLost(TaskHarborError):
    """A fenced operation carried a lease token that is no longer the job's.

    The job was rescued after its lease expired (and maybe leased again by
    another worker), cancelled, already finished, or no longer exists (pruned
    or deleted meanwhile): the report is refused so
    that a late worker never overwrites the work of the next one.
    """

    def __init__(self, job_id: object, token: str, state: str, reason: str) -> None:
        self.job_id = job_id
        self.token = token
        self.state = state
        self.reason = reason
        super().__init__(f"lease lost on job {job_id!r} (now {state}): {reason}")

    @classmethod
    def stale(cls, job_id: object, token: str, state: str) -> LeaseLost:
        """The one way drivers build this error, so that every driver says the same."""
        if state == "running":
            reason = "the job is running under a newer lease"
        else:
            reason = f"the job is no longer running (it is {state})"
        return cls(job_id, token, state, reason)

    @classmethod
    def missing(cls, job_id: object, token: str) -> LeaseLost:
        """The report of a fenced item whose job no longer exists (deleted or pruned
        while a worker held it): a lost lease for that item only, the same in every
        driver; its ``state`` is :data:`MISSING_JOB_STATE`."""
        return cls(job_id, token, MISSING_JOB_STATE, "the job no longer exists (pruned or deleted)")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LeaseLost):
            return NotImplemented
        return (self.job_id, self.token, self.state, self.reason) == (
            other.job_id,
            other.token,
            other.state,
            other.reason,
        )

    def __hash__(self) -> int:
        return hash((self.job_id, self.token, self.state, self.reason))


class StoreError(TaskHarborError):
    """The store itself cannot be used: a file that is not a database, a path
    that cannot be opened, a server that cannot be reached.  Nothing was written."""


def is_refusal(error: BaseException) -> bool:
    """Whether ``error`` means the store refused the call: sending it again cannot help.

    The contract's line between permanent and transient failures: every
    :class:`TaskHarborError` but a :class:`StoreError` is a refusal (bad input,
    an unknown job, a transition the table forbids); a ``StoreError``, and any
    exception that is not a ``TaskHarborError`` (a client library's lost
    connection, a timeout), is transient, and the caller may send the same
    call again.  The worker drops a report refused this way and retries the
    others, so a driver must never raise a lost connection as, say,
    ``InvalidRequest``.
    """
    return isinstance(error, TaskHarborError) and not isinstance(error, StoreError)


class SchemaError(StoreError):
    """The store's schema is missing, too old or too new for this version."""


CORRUPT_JOB_TYPE = "CorruptJob"
"""The error type recorded on a job dead-lettered because its stored data could not be read."""


class CorruptJob(StoreError):
    """A job's stored data holds something no driver writes; ``job_id`` names it.

    The contract's rule for such a job: a driver that leases it sends it to the
    dead-letter queue at once with this error (type :data:`CORRUPT_JOB_TYPE`)
    and hands out the rest of the batch; reading it raises this error; rescue
    and count never stop on it.
    """

    def __init__(self, job_id: int, problem: str) -> None:
        super().__init__(f"job {job_id} cannot be read from the store: {problem}")
        self.job_id = job_id
