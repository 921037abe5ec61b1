"""Transition tables derived once, at import, from the lifecycle classes.

A state machine instance costs about half a millisecond per event; a lookup in
these tables costs well under a microsecond.  So the classes in
:mod:`taskharbor.spec.lifecycle` define the graph, and everything that changes
a state (the reference model, every driver, the engine) asks these tables:

* ``JOB.resolve(event, source, facts)`` -> the target state, trying the
  event's transitions from ``source`` in declaration order with the guard
  facts given (a mapping from guard name to bool).  Raises
  :class:`~taskharbor.spec.errors.InvalidTransition` when the event does not
  apply to ``source``.
* ``JOB.options(event, source)`` -> the ordered ``(guards, target)`` choices,
  for drivers that compile the choice into their own language (a SQL ``CASE``).
* ``JOB.sources(event)`` -> the states the event applies to.
* ``WORKFLOW.event_for(source, target)`` -> the event that moves a workflow
  between two states, for drivers that derive the workflow's new state from
  its job graph.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidTransition
from .flow import FLOW_GUARDS
from .lifecycle import JOB_GUARDS, JobLifecycle, WorkflowLifecycle


class JobState(enum.StrEnum):
    """The persisted states of a job (every state of :class:`JobLifecycle` but ``new``)."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    AVAILABLE = "available"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


class WorkflowState(enum.StrEnum):
    """The states of a workflow (every state of :class:`WorkflowLifecycle`)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobEvent(enum.StrEnum):
    """The events of :class:`JobLifecycle`."""

    ENQUEUE = "enqueue"
    RELEASE = "release"
    PROMOTE = "promote"
    LEASE = "lease"
    HEARTBEAT = "heartbeat"
    SUCCEED = "succeed"
    FAIL = "fail"
    SNOOZE = "snooze"
    LEASE_EXPIRED = "lease_expired"
    CANCEL = "cancel"
    REQUEUE = "requeue"


class WorkflowEvent(enum.StrEnum):
    """The events of :class:`WorkflowLifecycle`."""

    FINISH = "finish"
    FAIL = "fail"
    CANCEL = "cancel"
    RESUME = "resume"


NEW = "new"
"""The job lifecycle's initial state: a job that is not stored yet."""


@dataclass(frozen=True, slots=True)
class Choice:
    """One transition of an event from a source.

    Taken when any of ``guards`` holds (a choice with no guards always does) and
    none of ``unless`` holds.
    """

    guards: tuple[str, ...]
    target: str
    unless: tuple[str, ...] = ()

    def holds(self, facts: Mapping[str, bool] | None) -> bool:
        if self.unless and facts is not None and any(facts.get(g, False) for g in self.unless):
            return False
        if not self.guards:
            return True
        return facts is not None and any(facts.get(guard, False) for guard in self.guards)


def _unless_names(transition: Any) -> tuple[str, ...]:
    """The ``unless=`` guard names of a transition (python-statemachine keeps them
    among its conds, expecting them false)."""
    return tuple(str(spec.func) for spec in transition.cond if spec.expected_value is False)


def _guard_names(transition: Any) -> tuple[str, ...]:
    """The guard names of a transition: one ``cond``, a name or names joined by ``or``."""
    specs = [spec for spec in transition.cond if spec.expected_value is not False]
    if not specs:
        return ()
    if len(specs) > 1:
        raise RuntimeError(f"spec: {transition} has several conds; join them with 'or'")
    names = tuple(part.strip() for part in str(specs[0].func).split(" or "))
    if not all(name.isidentifier() for name in names):
        raise RuntimeError(f"spec: guard {specs[0].func!r} is not 'name' or 'a or b'")
    return names


class TransitionTable:
    """The transitions of one lifecycle class, as plain dictionaries."""

    def __init__(self, machine: Any, *, kind: str) -> None:
        self.kind = kind
        self._choices: dict[tuple[str, str], tuple[Choice, ...]] = {}
        self._sources: dict[str, frozenset[str]] = {}
        self._event_for: dict[tuple[str, str], str] = {}
        self.states: tuple[str, ...] = tuple(state.id for state in machine.states)
        self.final_states: frozenset[str] = frozenset(s.id for s in machine.final_states)
        self.guards: frozenset[str] = frozenset()
        choices: dict[tuple[str, str], list[Choice]] = {}
        guards: set[str] = set()
        for state in machine.states:
            for transition in state.transitions:
                names = _guard_names(transition)
                unless = _unless_names(transition)
                guards.update(names, unless)
                for event in transition.events:
                    event_id = str(event)
                    target = transition.target.id
                    choice = Choice(names, target, unless)
                    choices.setdefault((event_id, state.id), []).append(choice)
                    self._event_for.setdefault((state.id, target), event_id)
        self._choices = {key: tuple(value) for key, value in choices.items()}
        sources: dict[str, set[str]] = {}
        for event, source in self._choices:
            sources.setdefault(event, set()).add(source)
        self._sources = {event: frozenset(states) for event, states in sources.items()}
        self.events: frozenset[str] = frozenset(self._sources)
        self.guards = frozenset(guards)

    def options(self, event: str, source: str) -> tuple[Choice, ...]:
        """The ordered choices of ``event`` from ``source`` (empty if it does not apply)."""
        return self._choices.get((event, source), ())

    def sources(self, event: str) -> frozenset[str]:
        """The states from which ``event`` applies."""
        return self._sources.get(event, frozenset())

    def targets(self, event: str, source: str) -> frozenset[str]:
        """Every state ``event`` can lead to from ``source``."""
        return frozenset(choice.target for choice in self.options(event, source))

    def allows(self, event: str, source: str) -> bool:
        """Whether ``event`` applies to a job (or workflow) in ``source``."""
        return (event, source) in self._choices

    def resolve(
        self,
        event: str,
        source: str,
        facts: Mapping[str, bool] | None = None,
        *,
        subject: object = None,
    ) -> str:
        """The target of ``event`` from ``source`` given the guard ``facts``.

        ``subject`` (a job or workflow id) is only used in the error message.
        A guard missing from ``facts`` counts as false.
        """
        choices = self._choices.get((event, source))
        if choices is None:
            raise InvalidTransition(self.kind, subject, event, source, self.sources(event))
        for choice in choices:
            if choice.holds(facts):
                return choice.target
        raise InvalidTransition(self.kind, subject, event, source, self.sources(event))

    def permits(
        self, event: str, source: str, facts: Mapping[str, bool] | None = None
    ) -> str | None:
        """Like :meth:`resolve`, but ``None`` where the event's guards hold the job
        back (a lease that a flow limit refuses) instead of raising."""
        for choice in self._choices.get((event, source), ()):
            if choice.holds(facts):
                return choice.target
        return None

    def event_for(self, source: str, target: str, *, subject: object = None) -> str:
        """The event that moves from ``source`` to ``target``; raises if there is none."""
        event = self._event_for.get((source, target))
        if event is None:
            raise InvalidTransition(self.kind, subject, f"{source}->{target}", source, frozenset())
        return event


JOB = TransitionTable(JobLifecycle, kind="job")
"""The job transition table."""

WORKFLOW = TransitionTable(WorkflowLifecycle, kind="workflow")
"""The workflow transition table."""


def _check_enums() -> None:
    """The enums above must name exactly the states, events and guards of the classes."""
    pairs = [
        ("job states", set(JOB.states) - {NEW}, {s.value for s in JobState}),
        ("workflow states", set(WORKFLOW.states), {s.value for s in WorkflowState}),
        ("job events", set(JOB.events), {e.value for e in JobEvent}),
        ("workflow events", set(WORKFLOW.events), {e.value for e in WorkflowEvent}),
        ("job guards", set(JOB.guards), set(JOB_GUARDS)),
        (
            "lease guards",
            {g for c in JOB.options("lease", "available") for g in c.unless},
            set(FLOW_GUARDS),
        ),
    ]
    for what, in_class, in_enum in pairs:
        if in_class != in_enum:
            raise RuntimeError(f"spec out of sync: {what} {sorted(in_class ^ in_enum)}")


_check_enums()

OPERATOR_EVENTS: frozenset[JobEvent] = frozenset({JobEvent.CANCEL, JobEvent.REQUEUE})
"""The events only an operator causes (``cancel``, ``requeue``)."""

FINISHED_JOB_STATES: frozenset[JobState] = frozenset(
    JobState(state)
    for state in JOB.states
    if state != NEW
    and all(event in OPERATOR_EVENTS for event in JOB.events if JOB.allows(event, state))
)
"""States in which a job waits for nothing: only an operator can move it on (derived
from :class:`JobLifecycle`: the states every event out of which is an operator's;
``succeeded``, ``dead`` and ``cancelled``)."""


def derive_workflow_state(
    step_states: Iterable[str], current: WorkflowState | None = None
) -> WorkflowState:
    """A workflow's state, derived from its steps' states (spec/spi.py, "Workflows").

    Any step dead -> failed; else any step cancelled -> cancelled, unless the
    workflow is ``current``-ly failed (its dead steps were cancelled out of the
    dead-letter queue: it failed, and its failure callback was told, so it stays
    failed); else every step succeeded -> succeeded; else running.  A change of
    the stored state must then be one :data:`WORKFLOW` has (``WORKFLOW.event_for``).
    Give it the states of the steps that count: not those in ``tolerated_steps``.
    """
    states = set(step_states)
    if JobState.DEAD in states:
        return WorkflowState.FAILED
    if JobState.CANCELLED in states:
        if current == WorkflowState.FAILED:
            return WorkflowState.FAILED
        return WorkflowState.CANCELLED
    if states == {JobState.SUCCEEDED}:
        return WorkflowState.SUCCEEDED
    return WorkflowState.RUNNING


QUEUED_JOB_STATES: frozenset[JobState] = frozenset(
    JobState(s) for s in JOB.sources(JobEvent.CANCEL) if s not in FINISHED_JOB_STATES
)
"""States from which ``cancel`` applies directly and that are not finished: the job
waits in the queue (``cancel_workflow`` cancels these; a dead step it leaves dead)."""
