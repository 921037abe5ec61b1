"""The spec's transition tables, compiled into SQL for the PostgreSQL driver.

Every state a statement writes or compares is a *parameter*: :data:`STATE_PARAMS`
names each :class:`JobState` and :class:`WorkflowState` member once
(``%(job_available)s``, ``%(workflow_failed)s``...), and every call passes
that mapping along with its own values.  :func:`target_case` turns the ordered
guard choices of ``JOB.options(event, source)`` into a ``CASE`` expression
with each guard name mapped to a SQL predicate, so a set-based statement picks
each row's target exactly as ``JOB.resolve`` would.

Partial index predicates and ``CHECK`` constraints cannot take parameters;
:func:`state_literals` renders them from the enum members for the DDL only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from psycopg import sql

from taskharbor.spec import JOB, JobEvent, JobState, WorkflowState
from taskharbor.spec.table import NEW

STATE_PARAMS: Mapping[str, str] = {
    **{f"job_{state.value}": state.value for state in JobState},
    **{f"workflow_{state.value}": state.value for state in WorkflowState},
}
"""The parameters every statement may use to name a state."""


def job_state(state: JobState | str) -> sql.Placeholder:
    """The parameter that holds ``state`` (a job state) in every call."""
    return sql.Placeholder(f"job_{JobState(state).value}")


def workflow_state(state: WorkflowState) -> sql.Placeholder:
    """The parameter that holds ``state`` (a workflow state) in every call."""
    return sql.Placeholder(f"workflow_{state.value}")


def job_states(states: Iterable[JobState | str]) -> sql.Composed:
    """``(%(job_a)s, %(job_b)s)``: a parenthesised list for ``IN``, in a stable order."""
    ordered = sorted(JobState(state) for state in states)
    return sql.SQL("({})").format(sql.SQL(", ").join(job_state(state) for state in ordered))


def state_literals(states: Iterable[JobState | WorkflowState]) -> sql.Composed:
    """``('a', 'b')`` as literals: for DDL (index predicates, checks) only."""
    ordered = sorted(state.value for state in states)
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(value) for value in ordered))


def event_sources(event: JobEvent) -> frozenset[JobState]:
    """The persisted states ``event`` applies to."""
    return frozenset(JobState(source) for source in JOB.sources(event) if source != NEW)


def target_case(
    event: JobEvent,
    guards: Mapping[str, sql.Composable],
    *,
    sources: Iterable[JobState] | None = None,
) -> sql.Composed:
    """A ``CASE`` giving the target state of ``event`` for the row ``j`` (its ``j.state``).

    ``guards`` maps each guard name the event's choices use to a SQL predicate.
    Choices are tried in the spec's order, the first whose guards hold wins; a
    row in a state the event does not apply to gets ``NULL`` (which the
    ``NOT NULL`` state column refuses, so a bug cannot store it).  ``sources``
    narrows the states compiled (default: every state the event applies to).
    """
    whens: list[sql.Composable] = []
    chosen = event_sources(event) if sources is None else frozenset(sources)
    for source in sorted(chosen):
        for choice in JOB.options(event, source):
            condition: list[sql.Composable] = [sql.SQL("j.state = {}").format(job_state(source))]
            if choice.guards:
                condition.append(_any_guard(event, choice.guards, guards))
            whens.append(
                sql.SQL("WHEN {} THEN {}").format(
                    sql.SQL(" AND ").join(condition), job_state(choice.target)
                )
            )
    if not whens:
        raise ValueError(f"event {event} applies to none of {sorted(chosen)}")
    return sql.SQL("CASE {} END").format(sql.SQL(" ").join(whens))


def enqueue_case(guards: Mapping[str, sql.Composable]) -> sql.Composed:
    """The ``CASE`` giving a new job's first state (event ``enqueue`` from ``new``)."""
    whens = [
        sql.SQL("WHEN {} THEN {}").format(
            _any_guard(JobEvent.ENQUEUE, choice.guards, guards)
            if choice.guards
            else sql.SQL("TRUE"),
            job_state(choice.target),
        )
        for choice in JOB.options(JobEvent.ENQUEUE, NEW)
    ]
    return sql.SQL("CASE {} END").format(sql.SQL(" ").join(whens))


def _any_guard(
    event: JobEvent, names: tuple[str, ...], guards: Mapping[str, sql.Composable]
) -> sql.Composed:
    missing = [name for name in names if name not in guards]
    if missing:
        raise ValueError(f"event {event} needs SQL for guards {missing}")
    return sql.SQL("({})").format(sql.SQL(" OR ").join(guards[name] for name in names))
