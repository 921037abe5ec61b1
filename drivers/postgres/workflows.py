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
  changed only through ``WORKFLOW.event_for``; a pending failure callback is
  released or cancelled with the change (its row is locked before the
  workflow rows, in the lock order below).
* :func:`insert_callback` - the statement storing a workflow's failure callback, ``pending`` with
  ``waiting_on = 1`` for good (no step counts it down), so ``requeue``'s
  ``waits_on_dependencies`` holds for it as the contract says.

Lock order everywhere: job rows by ascending id, then workflow rows by
ascending id, so concurrent calls cannot deadlock on one another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from psycopg import Cursor, sql
from psycopg.types.json import Json

from taskharbor.spec import (
    JOB,
    WORKFLOW,
    JobEvent,
    JobId,
    JobState,
    WorkflowId,
    WorkflowState,
)
from taskharbor.spec.records import CALLBACK_CANCELS, map_ref, step_failure
from taskharbor.spec.table import FINISHED_JOB_STATES, NEW, QUEUED_JOB_STATES

from . import statements
from .rows import job_record
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
           AS inputs,
       j.id = (SELECT w.on_failure FROM {workflows} w WHERE w.id = j.workflow_id) AS callback
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

_LOCK_CALLBACKS = """
SELECT j.id FROM {jobs} j
WHERE j.id IN (SELECT w.on_failure FROM {workflows} w WHERE w.id = ANY(%(ids)s::bigint[]))
ORDER BY j.id FOR UPDATE OF j
"""

_LOCK_WORKFLOWS = """
SELECT w.id, w.state, w.on_failure FROM {workflows} w
WHERE w.id = ANY(%(ids)s::bigint[]) ORDER BY w.id FOR UPDATE
"""

_DERIVED = """
SELECT j.workflow_id AS id,
       CASE WHEN bool_or(j.state = {dead}) THEN {failed}
            WHEN bool_or(j.state = {cancelled}) THEN {wf_cancelled}
            WHEN bool_and(j.state = {succeeded}) THEN {wf_succeeded}
            ELSE {wf_running} END AS state
FROM {jobs} j JOIN {workflows} w ON w.id = j.workflow_id
WHERE j.workflow_id = ANY(%(ids)s::bigint[]) AND j.id IS DISTINCT FROM w.on_failure
GROUP BY j.workflow_id
"""

_INSERT_CALLBACK = """
WITH callback AS (
    INSERT INTO {jobs} (id, task, queue, state, args, kwargs, priority, run_at, attempt,
                        max_attempts, created_at, workflow_id, waiting_on, step_args, retry,
                        headers)
    VALUES (%(id)s, %(task)s, %(queue)s, {pending}, %(args)s, %(kwargs)s, %(priority)s,
            COALESCE(%(run_at)s::timestamptz, {now}), 0, %(max_attempts)s, {now},
            %(workflow_id)s, 1, %(args)s, %(retry)s, %(headers)s)
    RETURNING id
)
UPDATE {workflows} w SET on_failure = (SELECT id FROM callback)
WHERE w.id = %(workflow_id)s RETURNING w.*
"""

_RELEASE_CALLBACKS = """
UPDATE {jobs} j
SET state = {release}, run_at = CASE WHEN {release} = {scheduled} THEN j.run_at ELSE {now} END,
    args = m.args
FROM unnest(%(ids)s::bigint[], %(args)s::json[]) AS m(id, args)
WHERE j.id = m.id AND j.state = {pending}
RETURNING j.queue, j.state
"""

_OWN_ARGS = "SELECT j.id, j.step_args FROM {jobs} j WHERE j.id = ANY(%(ids)s::bigint[])"

_CANCEL_CALLBACKS = """
UPDATE {jobs} j SET state = {cancel}, finished_at = {now}, reason = m.reason
FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) AS m(id, reason)
WHERE j.id = m.id AND j.state = {pending}
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
def _lock_callbacks(tables: Tables) -> sql.Composed:
    return tables.sql(_LOCK_CALLBACKS)


@statement
def insert_callback(tables: Tables) -> sql.Composed:
    """Insert a workflow's failure callback (``graphs.callback_values``) and note its id
    on the workflow; returns the workflow's row."""
    return tables.sql(_INSERT_CALLBACK, pending=_first_callback_state())


def _first_callback_state() -> sql.Placeholder:
    """A failure callback's first state: ``enqueue`` with ``waits_on_dependencies``."""
    facts = {"waits_on_dependencies": True, "run_at_in_future": False}
    return job_state(JOB.resolve(JobEvent.ENQUEUE, NEW, facts))


@statement
def _release_callbacks(tables: Tables) -> sql.Composed:
    in_future = sql.SQL("j.run_at > {}").format(tables.now)
    return tables.sql(
        _RELEASE_CALLBACKS,
        release=target_case(JobEvent.RELEASE, {"run_at_in_future": in_future}),
        scheduled=job_state(JobState.SCHEDULED),
        pending=job_state(JobState.PENDING),
    )


@statement
def _own_args(tables: Tables) -> sql.Composed:
    return tables.sql(_OWN_ARGS)


@statement
def _cancel_callbacks(tables: Tables) -> sql.Composed:
    return tables.sql(
        _CANCEL_CALLBACKS,
        cancel=target_case(JobEvent.CANCEL, {}),
        pending=job_state(JobState.PENDING),
    )


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

    ``None`` for a job that is no workflow step, or a failure callback that stays
    released: its args stay as they are (the callback's failure in front).
    """
    own = move["step_args"]
    if own is None or (move.get("callback") and move["target"] != JobState.PENDING):
        return None
    if move["input_ref"] is None or move["target"] == JobState.PENDING:
        return Json(own)
    results = {int(job_id): value for job_id, value in (move["inputs"] or {}).items()}
    return Json([map_ref(move["input_ref"], results), *own])


def derive(
    cur: Cursor[Row],
    tables: Tables,
    params: Params,
    ids: Iterable[WorkflowId],
    *,
    dead: Mapping[WorkflowId, JobId] | None = None,
) -> list[Row]:
    """Give each workflow of ``ids`` the state its steps say, through ``WORKFLOW``,
    and move its pending failure callback on with it.

    The workflow rows are locked first and the steps read by the *next*
    statement: its fresh snapshot sees every step committed by a transaction
    that held those locks before, so two calls finishing the last steps of a
    workflow at once cannot both derive from a stale view of the other (and
    only one of two steps dying at once sees the workflow become ``failed``
    and releases its callback).  ``dead`` maps a workflow to the first of its
    steps that ended dead in this call.  Returns the released callbacks'
    queue and state.
    """
    wanted = sorted(set(ids))
    if not wanted:
        return []
    cur.execute(_lock_callbacks(tables), {**params, "ids": wanted})
    locked = cur.execute(_lock_workflows(tables), {**params, "ids": wanted}).fetchall()
    current = {row["id"]: WorkflowState(row["state"]) for row in locked}
    callbacks = {row["id"]: row["on_failure"] for row in locked if row["on_failure"] is not None}
    derived = cur.execute(_derived(tables), {**params, "ids": wanted}).fetchall()
    changes = {
        row["id"]: WorkflowState(row["state"])
        for row in derived
        if row["state"] != current[row["id"]]
    }
    for workflow_id, target in changes.items():
        WORKFLOW.event_for(current[workflow_id], target, subject=workflow_id)
    if not changes:
        return []
    values = {**params, "ids": list(changes), "states": [s.value for s in changes.values()]}
    cur.execute(_set_workflows(tables), values)
    moved = {wid: state for wid, state in changes.items() if wid in callbacks}
    return _move_callbacks(cur, tables, params, moved, callbacks, dead or {})


def _move_callbacks(
    cur: Cursor[Row],
    tables: Tables,
    params: Params,
    changes: Mapping[WorkflowId, WorkflowState],
    callbacks: Mapping[WorkflowId, JobId],
    dead: Mapping[WorkflowId, JobId],
) -> list[Row]:
    """Release the pending callbacks of the workflows that failed, with their first
    dead step's :func:`step_failure` in front of their own args; cancel those of the
    workflows that succeeded or were cancelled."""
    cancels = [
        (callbacks[w], CALLBACK_CANCELS[s]) for w, s in changes.items() if s in CALLBACK_CANCELS
    ]
    if cancels:
        values = {**params, "ids": [c for c, _ in cancels], "reasons": [r for _, r in cancels]}
        cur.execute(_cancel_callbacks(tables), values)
    failed = [w for w, state in changes.items() if state is WorkflowState.FAILED]
    if not failed:
        return []
    steps = {
        row["id"]: job_record(row)
        for row in cur.execute(
            statements.select_jobs(tables), {**params, "ids": [dead[w] for w in failed]}
        )
    }
    own = {
        row["id"]: row["step_args"]
        for row in cur.execute(_own_args(tables), {**params, "ids": [callbacks[w] for w in failed]})
    }
    args = [Json([step_failure(w, steps[dead[w]]), *own[callbacks[w]]]) for w in failed]
    values = {**params, "ids": [callbacks[w] for w in failed], "args": args}
    return cur.execute(_release_callbacks(tables), values).fetchall()


def ended_badly(state: str) -> bool:
    """Whether a step in ``state`` cancels its dependents (dead or cancelled)."""
    return state in FINISHED_JOB_STATES and state != JobState.SUCCEEDED
