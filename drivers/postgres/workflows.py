"""Workflow effects of the PostgreSQL driver, run inside the transaction that causes them.

* :func:`after_succeeded` - a step succeeded: its dependents' ``waiting_on``
  counters are decremented with ``UPDATE ... RETURNING``.  Each dependent row
  is locked while its counter changes, so when members of a chord finish at
  the same instant on different connections, exactly one transaction sees the
  counter reach zero, and only that one releases the callback.  The release
  is a *later* statement of that transaction: under READ COMMITTED it takes a
  fresh snapshot, which sees the results committed by the other members.
* :func:`cascade` - steps ended dead or cancelled: the pending steps that
  depend on them, directly or not, are cancelled.  When several steps end in
  one call, a dependent takes the reason of the first of them (call order),
  as if the call's items were applied one after the other.
* :func:`requeue` - moves jobs back into the queue, with a workflow step's
  args rebuilt from its own args and its resolved input.
* :func:`derive` - each touched workflow's state, derived from its steps and
  changed only through ``WORKFLOW.event_for``.

Lock order everywhere: job rows by ascending id, then workflow rows by
ascending id, so concurrent calls cannot deadlock on one another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from psycopg import Cursor, sql
from psycopg.types.json import Json

from taskharbor.spec import (
    WORKFLOW,
    JobEvent,
    JobId,
    JobState,
    WorkflowId,
    WorkflowState,
)
from taskharbor.spec.records import map_ref
from taskharbor.spec.table import FINISHED_JOB_STATES, QUEUED_JOB_STATES

from .tables import Tables, statement
from .transitions import job_state, job_states, target_case, workflow_state

Row = dict[str, Any]
Params = Mapping[str, Any]

_WAITS = {"waits_on_dependencies": sql.SQL("j.waiting_on > 0")}

_DECREMENT = """
WITH finished AS (SELECT unnest(%(ids)s::bigint[]) AS id),
hits AS (
    SELECT d.id, count(*) AS n
    FROM finished f
    JOIN {jobs} s ON s.id = f.id
    JOIN {jobs} d ON d.workflow_id = s.workflow_id AND s.id = ANY(d.depends_on)
    GROUP BY d.id
),
locked AS (
    SELECT d.id, h.n FROM {jobs} d JOIN hits h ON h.id = d.id ORDER BY d.id FOR UPDATE OF d
)
UPDATE {jobs} j SET waiting_on = j.waiting_on - l.n
FROM locked l WHERE j.id = l.id
RETURNING j.id, j.waiting_on, j.state
"""

_RELEASE_TARGETS = """
SELECT j.id, {release} AS target, j.input_ref, j.step_args,
       (SELECT json_object_agg(d.id, d.result) FROM {jobs} d WHERE d.id = ANY(j.depends_on))
           AS inputs
FROM {jobs} j WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state = {pending}
ORDER BY j.id FOR UPDATE OF j
"""

_RELEASE = """
UPDATE {jobs} j
SET state = m.target,
    run_at = CASE WHEN m.target = {scheduled} THEN j.run_at ELSE {now} END,
    args = m.args
FROM unnest(%(ids)s::bigint[], %(targets)s::text[], %(args)s::json[]) AS m(id, target, args)
WHERE j.id = m.id
RETURNING j.queue, j.state
"""

_CASCADE = """
WITH RECURSIVE origin AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) WITH ORDINALITY
        AS o(id, reason, ord)
),
downstream (id, workflow_id, ord, reason, passed_on) AS (
    {seeds}
    SELECT d.id, d.workflow_id, o.ord, o.reason, o.reason
    FROM origin o
    JOIN {jobs} s ON s.id = o.id
    JOIN {jobs} d ON d.workflow_id = s.workflow_id AND s.id = ANY(d.depends_on)
    UNION
    SELECT d.id, d.workflow_id, w.ord, w.passed_on, w.passed_on
    FROM downstream w
    JOIN {jobs} d ON d.workflow_id = w.workflow_id AND w.id = ANY(d.depends_on)
),
claimed AS (
    SELECT DISTINCT ON (id) id, reason FROM downstream ORDER BY id, ord
),
locked AS (
    SELECT j.id, c.reason, {cancel} AS target
    FROM {jobs} j JOIN claimed c ON c.id = j.id
    WHERE j.state IN {cancellable}
    ORDER BY j.id FOR UPDATE OF j
)
UPDATE {jobs} j SET state = l.target, finished_at = {now}, reason = l.reason
FROM locked l WHERE j.id = l.id
RETURNING j.id, j.workflow_id
"""

_SELF_SEEDS = """
    SELECT s.id, s.workflow_id, o.ord, %(self_reason)s::text, o.reason
    FROM origin o JOIN {jobs} s ON s.id = o.id
    UNION
"""

_REQUEUE_TARGETS = """
WITH chosen AS (
    SELECT unnest(%(ids)s::bigint[]) AS id
    UNION
    SELECT j.id FROM {jobs} j
    WHERE j.workflow_id = ANY(%(workflows)s::bigint[]) AND j.state = {cancelled}
)
SELECT j.id, {requeue} AS target, j.input_ref, j.step_args,
       (SELECT json_object_agg(d.id, d.result) FROM {jobs} d WHERE d.id = ANY(j.depends_on))
           AS inputs
FROM {jobs} j WHERE j.id IN (SELECT id FROM chosen)
ORDER BY j.id FOR UPDATE OF j
"""

_REQUEUE = """
UPDATE {jobs} j
SET state = m.target, attempt = 0, run_at = {now}, cancel_requested = false,
    finished_at = NULL, reason = NULL, result = NULL, args = COALESCE(m.args, j.args)
FROM unnest(%(ids)s::bigint[], %(targets)s::text[], %(args)s::json[]) AS m(id, target, args)
WHERE j.id = m.id
RETURNING j.queue, j.state
"""

_LOCK_WORKFLOWS = """
SELECT w.id, w.state FROM {workflows} w
WHERE w.id = ANY(%(ids)s::bigint[]) ORDER BY w.id FOR UPDATE
"""

_DERIVED = """
SELECT j.workflow_id AS id,
       CASE WHEN bool_or(j.state = {dead}) THEN {failed}
            WHEN bool_or(j.state = {cancelled}) THEN {wf_cancelled}
            WHEN bool_and(j.state = {succeeded}) THEN {wf_succeeded}
            ELSE {wf_running} END AS state
FROM {jobs} j WHERE j.workflow_id = ANY(%(ids)s::bigint[]) GROUP BY j.workflow_id
"""

_SET_WORKFLOWS = """
UPDATE {workflows} w
SET state = m.state, finished_at = CASE WHEN m.state = {wf_running} THEN NULL ELSE {now} END
FROM unnest(%(ids)s::bigint[], %(states)s::text[]) AS m(id, state)
WHERE w.id = m.id
"""


@statement
def _decrement(tables: Tables) -> sql.Composed:
    return tables.sql(_DECREMENT)


@statement
def _release_targets(tables: Tables) -> sql.Composed:
    in_future = sql.SQL("j.run_at > {}").format(tables.now)
    release = target_case(JobEvent.RELEASE, {"run_at_in_future": in_future})
    return tables.sql(_RELEASE_TARGETS, release=release, pending=job_state(JobState.PENDING))


@statement
def _release(tables: Tables) -> sql.Composed:
    return tables.sql(_RELEASE, scheduled=job_state(JobState.SCHEDULED))


@statement
def _cascade(tables: Tables, *, with_origins: bool) -> sql.Composed:
    return tables.sql(
        _CASCADE,
        seeds=tables.sql(_SELF_SEEDS) if with_origins else sql.SQL(""),
        cancel=target_case(JobEvent.CANCEL, {}),
        cancellable=job_states(QUEUED_JOB_STATES if with_origins else {JobState.PENDING}),
    )


@statement
def _requeue_targets(tables: Tables) -> sql.Composed:
    return tables.sql(
        _REQUEUE_TARGETS,
        requeue=target_case(JobEvent.REQUEUE, _WAITS),
        cancelled=job_state(JobState.CANCELLED),
    )


@statement
def _requeue(tables: Tables) -> sql.Composed:
    return tables.sql(_REQUEUE)


@statement
def _lock_workflows(tables: Tables) -> sql.Composed:
    return tables.sql(_LOCK_WORKFLOWS)


@statement
def _derived(tables: Tables) -> sql.Composed:
    return tables.sql(
        _DERIVED,
        dead=job_state(JobState.DEAD),
        cancelled=job_state(JobState.CANCELLED),
        succeeded=job_state(JobState.SUCCEEDED),
        failed=workflow_state(WorkflowState.FAILED),
        wf_cancelled=workflow_state(WorkflowState.CANCELLED),
        wf_succeeded=workflow_state(WorkflowState.SUCCEEDED),
        wf_running=workflow_state(WorkflowState.RUNNING),
    )


@statement
def _set_workflows(tables: Tables) -> sql.Composed:
    return tables.sql(_SET_WORKFLOWS, wf_running=workflow_state(WorkflowState.RUNNING))


def after_succeeded(
    cur: Cursor[Row], tables: Tables, params: Params, ids: Sequence[JobId]
) -> list[Row]:
    """Count ``ids`` (steps that just succeeded) off their dependents; release the ready ones.

    Returns the released rows' queue and new state.
    """
    rows = cur.execute(_decrement(tables), {**params, "ids": list(ids)}).fetchall()
    ready = [
        row["id"] for row in rows if row["waiting_on"] == 0 and row["state"] == JobState.PENDING
    ]
    if not ready:
        return []
    moves = cur.execute(_release_targets(tables), {**params, "ids": ready}).fetchall()
    return cur.execute(_release(tables), _moves(params, moves)).fetchall()


def cascade(
    cur: Cursor[Row],
    tables: Tables,
    params: Params,
    origins: Sequence[tuple[JobId, str]],
    *,
    self_reason: str | None = None,
) -> set[WorkflowId]:
    """Cancel the pending dependents of ``origins`` (job id, reason given to its dependents).

    With ``self_reason`` the origins themselves are cancelled too (``Driver.cancel``):
    an origin that depends on an earlier origin takes that one's reason instead.
    Returns the workflows touched.
    """
    if not origins:
        return set()
    query = _cascade(tables, with_origins=self_reason is not None)
    values = {
        **params,
        "ids": [job_id for job_id, _ in origins],
        "reasons": [reason for _, reason in origins],
        "self_reason": self_reason,
    }
    rows = cur.execute(query, values).fetchall()
    return {row["workflow_id"] for row in rows if row["workflow_id"] is not None}


def requeue(
    cur: Cursor[Row],
    tables: Tables,
    params: Params,
    ids: Sequence[JobId],
    workflows: Iterable[WorkflowId],
) -> list[Row]:
    """Requeue ``ids`` and every cancelled step of ``workflows`` (event ``requeue``).

    The caller has checked that ``ids`` are dead or cancelled.  Returns the
    moved rows' queue and new state.
    """
    values = {**params, "ids": list(ids), "workflows": list(workflows)}
    moves = cur.execute(_requeue_targets(tables), values).fetchall()
    return cur.execute(_requeue(tables), _moves(params, moves)).fetchall()


def _moves(params: Params, moves: Sequence[Row]) -> dict[str, Any]:
    """Parameters moving each row to its target, with a workflow step's args rebuilt."""
    return {
        **params,
        "ids": [move["id"] for move in moves],
        "targets": [move["target"] for move in moves],
        "args": [_step_args(move) for move in moves],
    }


def _step_args(move: Row) -> Json | None:
    """A step's own args, with its input in front unless it goes back to ``pending``.

    ``None`` for a job that is no workflow step: its args stay as they are.
    """
    own = move["step_args"]
    if own is None:
        return None
    if move["input_ref"] is None or move["target"] == JobState.PENDING:
        return Json(own)
    results = {int(job_id): value for job_id, value in (move["inputs"] or {}).items()}
    return Json([map_ref(move["input_ref"], results), *own])


def derive(cur: Cursor[Row], tables: Tables, params: Params, ids: Iterable[WorkflowId]) -> None:
    """Give each workflow of ``ids`` the state its steps say, through ``WORKFLOW``.

    The workflow rows are locked first and the steps read by the *next*
    statement: its fresh snapshot sees every step committed by a transaction
    that held those locks before, so two calls finishing the last steps of a
    workflow at once cannot both derive from a stale view of the other.
    """
    wanted = sorted(set(ids))
    if not wanted:
        return
    locked = cur.execute(_lock_workflows(tables), {**params, "ids": wanted}).fetchall()
    current = {row["id"]: WorkflowState(row["state"]) for row in locked}
    derived = cur.execute(_derived(tables), {**params, "ids": wanted}).fetchall()
    changes = {
        row["id"]: WorkflowState(row["state"])
        for row in derived
        if row["state"] != current[row["id"]]
    }
    for workflow_id, target in changes.items():
        WORKFLOW.event_for(current[workflow_id], target, subject=workflow_id)
    if changes:
        values = {**params, "ids": list(changes), "states": [s.value for s in changes.values()]}
        cur.execute(_set_workflows(tables), values)


def ended_badly(state: str) -> bool:
    """Whether a step in ``state`` cancels its dependents (dead or cancelled)."""
    return state in FINISHED_JOB_STATES and state != JobState.SUCCEEDED
