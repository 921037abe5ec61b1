"""Workflow effects of the PostgreSQL driver, run inside the transaction that causes them.

* :func:`after_succeeded` - a step succeeded: its dependents' ``waiting_on``
  counters are decremented with ``UPDATE ... RETURNING``.  Each dependent row
  is locked while its counter changes, so when members of a chord finish at
  the same instant on different connections, exactly one transaction sees the
  counter reach zero, and only that one releases the callback.  The release
  is a *later* statement of that transaction: under READ COMMITTED it takes a
  fresh snapshot, which sees the results committed by the other members.
* :func:`cascade` - steps ended dead or cancelled: the pending steps that
  depend on them, directly or not, are cancelled, up to the partial steps (a
  job that already finished, a dead one cancelled, keeps its ``finished_at``).
  When several steps end in one call, a dependent takes the reason of the
  first of them (call order), as if the call's items were applied one after
  the other.
* :func:`requeue` - moves jobs back into the queue, with a workflow step's
  args rebuilt from its own args and its resolved input.
* :func:`derive` - each touched workflow's pending partial steps that no longer
  wait are released (their rows locked first, the steps they wait for read by a
  later statement, so exactly one of two calls ending their last dependencies
  at once releases them; ``waiting_on`` counts successes only, so a partial
  step never leaves by it); then the workflow's state, derived from its
  counted steps (``tolerated`` ones left out; a failed one stays failed when
  its dead steps were cancelled: ``derive_workflow_state`` with the current
  state) and changed only through
  ``WORKFLOW.event_for``; a pending failure callback is released or cancelled
  with the change (its row is locked with the partial steps, before the
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
    JobRecord,
    JobState,
    WorkflowId,
    WorkflowState,
)
from taskharbor.spec.records import CALLBACK_CANCELS, map_ref, partial_input, step_failure
from taskharbor.spec.table import FINISHED_JOB_STATES, NEW

from . import statements
from .rows import job_record
from .tables import Tables, statement
from .transitions import job_state, job_states, target_case, workflow_state

Row = dict[str, Any]
Params = Mapping[str, Any]

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
RETURNING j.id, j.waiting_on, j.state, j.partial
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
    JOIN {jobs} d ON d.workflow_id = s.workflow_id AND s.id = ANY(d.depends_on) AND NOT d.partial
    UNION
    SELECT d.id, d.workflow_id, w.ord, w.passed_on, w.passed_on
    FROM downstream w
    JOIN {jobs} d ON d.workflow_id = w.workflow_id AND w.id = ANY(d.depends_on) AND NOT d.partial
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
UPDATE {jobs} j SET state = l.target, finished_at = COALESCE(j.finished_at, {now}),
    reason = l.reason
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
      AND (SELECT w.state FROM {workflows} w WHERE w.id = j.workflow_id) <> {wf_succeeded}
)
SELECT j.id, {requeue} AS target, j.input_ref, j.step_args, j.partial, j.depends_on,
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
SELECT j.id, j.partial AND j.state = {pending} AS waiting FROM {jobs} j
WHERE j.id IN (
    SELECT w.on_failure FROM {workflows} w WHERE w.id = ANY(%(ids)s::bigint[])
    UNION ALL
    SELECT p.id FROM {jobs} p WHERE p.workflow_id = ANY(%(ids)s::bigint[]) AND p.partial
)
ORDER BY j.id FOR UPDATE OF j
"""

_READY_PARTIAL = """
SELECT j.id, {release} AS target, j.input_ref, j.step_args, j.depends_on
FROM {jobs} j
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state = {pending}
  AND NOT EXISTS (
      SELECT FROM {jobs} d WHERE d.id = ANY(j.depends_on) AND d.state NOT IN {finished}
  )
ORDER BY j.id
"""

_COUNTED = "SELECT j.id FROM {jobs} j WHERE j.id = ANY(%(ids)s::bigint[]) AND NOT j.tolerated"

_LOCK_WORKFLOWS = """
SELECT w.id, w.state, w.on_failure FROM {workflows} w
WHERE w.id = ANY(%(ids)s::bigint[]) ORDER BY w.id FOR UPDATE
"""

_DERIVED = """
SELECT j.workflow_id AS id,
       CASE WHEN bool_or(j.state = {dead}) THEN {failed}
            WHEN bool_or(j.state = {cancelled}) AND w.state = {failed} THEN {failed}
            WHEN bool_or(j.state = {cancelled}) THEN {wf_cancelled}
            WHEN bool_and(j.state = {succeeded}) THEN {wf_succeeded}
            ELSE {wf_running} END AS state
FROM {jobs} j JOIN {workflows} w ON w.id = j.workflow_id
WHERE j.workflow_id = ANY(%(ids)s::bigint[]) AND j.id IS DISTINCT FROM w.on_failure
  AND NOT j.tolerated
GROUP BY j.workflow_id, w.state
"""

_INSERT_CALLBACK = """
WITH callback AS (
    INSERT INTO {jobs} (id, task, queue, state, args, kwargs, priority, run_at, attempt,
                        max_attempts, created_at, workflow_id, waiting_on, step_args, retry,
                        headers, tags, meta, flow, flow_key, flow_sequence, flow_locks)
    VALUES (%(id)s, %(task)s, %(queue)s, {pending}, %(args)s, %(kwargs)s, %(priority)s,
            COALESCE(%(run_at)s::timestamptz, {now}), 0, %(max_attempts)s, {now},
            %(workflow_id)s, 1, %(args)s, %(retry)s, %(headers)s, %(tags)s::text[], %(meta)s,
            %(flow)s, %(flow_key)s, %(flow_sequence)s, %(flow_locks)s::text[])
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
        cancellable=job_states(
            JOB.sources(JobEvent.CANCEL) if with_origins else {JobState.PENDING}
        ),
    )


_REQUEUE_WAITS = """
CASE WHEN j.partial THEN EXISTS (
         SELECT FROM {jobs} d WHERE d.id = ANY(j.depends_on)
         AND (d.state NOT IN {finished} OR d.id IN (SELECT id FROM chosen)))
     ELSE j.waiting_on > 0 END
"""
"""``waits_on_dependencies`` at requeue: a partial step waits for a step that has not
ended or that the same statement requeues; another step for a step that has not
succeeded (``waiting_on`` counts those)."""


@statement
def _requeue_targets(tables: Tables) -> sql.Composed:
    waits = tables.sql(_REQUEUE_WAITS, finished=job_states(FINISHED_JOB_STATES))
    return tables.sql(
        _REQUEUE_TARGETS,
        requeue=target_case(JobEvent.REQUEUE, {"waits_on_dependencies": waits}),
        cancelled=job_state(JobState.CANCELLED),
        wf_succeeded=workflow_state(WorkflowState.SUCCEEDED),
    )


@statement
def _requeue(tables: Tables) -> sql.Composed:
    return tables.sql(_REQUEUE)


@statement
def _lock_workflows(tables: Tables) -> sql.Composed:
    return tables.sql(_LOCK_WORKFLOWS)


@statement
def _lock_callbacks(tables: Tables) -> sql.Composed:
    return tables.sql(_LOCK_CALLBACKS, pending=job_state(JobState.PENDING))


@statement
def _ready_partial(tables: Tables) -> sql.Composed:
    in_future = sql.SQL("j.run_at > {}").format(tables.now)
    return tables.sql(
        _READY_PARTIAL,
        release=target_case(JobEvent.RELEASE, {"run_at_in_future": in_future}),
        pending=job_state(JobState.PENDING),
        finished=job_states(FINISHED_JOB_STATES),
    )


@statement
def _counted(tables: Tables) -> sql.Composed:
    return tables.sql(_COUNTED)


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
        row["id"]
        for row in rows
        if row["waiting_on"] == 0 and row["state"] == JobState.PENDING and not row["partial"]
    ]  # a partial step is released by derive, which sees every way a step ends
    if not ready:
        return []
    moves = cur.execute(_release_targets(tables), {**params, "ids": ready}).fetchall()
    return cur.execute(_release(tables), _moves(params, moves, {})).fetchall()


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
    partial = [move for move in moves if move["partial"] and _takes_input(move)]
    steps = _records_of(cur, tables, params, partial)
    return cur.execute(_requeue(tables), _moves(params, moves, steps)).fetchall()


def _takes_input(move: Row) -> bool:
    """Whether a step moves out of ``pending`` with its input put in front."""
    return move["input_ref"] is not None and move["target"] != JobState.PENDING


def _records_of(
    cur: Cursor[Row], tables: Tables, params: Params, moves: Sequence[Row]
) -> dict[JobId, JobRecord]:
    """The stored records of the steps the partial steps of ``moves`` depend on."""
    wanted = sorted({dep for move in moves for dep in move["depends_on"]})
    if not wanted:
        return {}
    rows = cur.execute(statements.select_jobs(tables), {**params, "ids": wanted})
    return {row["id"]: job_record(row) for row in rows}


def _moves(
    params: Params, moves: Sequence[Row], steps: Mapping[JobId, JobRecord]
) -> dict[str, Any]:
    """Parameters moving each row to its target, with a workflow step's args rebuilt
    (``steps``: the records a partial step's input is made of)."""
    return {
        **params,
        "ids": [move["id"] for move in moves],
        "targets": [move["target"] for move in moves],
        "args": [_step_args(move, steps) for move in moves],
    }


def _step_args(move: Row, steps: Mapping[JobId, JobRecord]) -> Json | None:
    """A step's own args, with its input in front unless it goes back to ``pending``
    (a partial step's: the two values of ``partial_input``).

    ``None`` for a job that is no workflow step, or a failure callback that stays
    released: its args stay as they are (the callback's failure in front).
    """
    own = move["step_args"]
    if own is None or (move.get("callback") and move["target"] != JobState.PENDING):
        return None
    if not _takes_input(move):
        return Json(own)
    if move.get("partial"):
        return Json([*partial_input(move["input_ref"], steps), *own])
    results = {int(job_id): value for job_id, value in (move["inputs"] or {}).items()}
    return Json([map_ref(move["input_ref"], results), *own])


def derive(
    cur: Cursor[Row],
    tables: Tables,
    params: Params,
    ids: Iterable[WorkflowId],
    *,
    dead: Mapping[WorkflowId, Sequence[JobId]] | None = None,
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
    jobs = cur.execute(_lock_callbacks(tables), {**params, "ids": wanted}).fetchall()
    waiting = [row["id"] for row in jobs if row["waiting"]]
    released = _release_partial(cur, tables, params, waiting) if waiting else []
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
        return released
    values = {**params, "ids": list(changes), "states": [s.value for s in changes.values()]}
    cur.execute(_set_workflows(tables), values)
    moved = {wid: state for wid, state in changes.items() if wid in callbacks}
    return released + _move_callbacks(cur, tables, params, moved, callbacks, dead or {})


def _release_partial(
    cur: Cursor[Row], tables: Tables, params: Params, ids: Sequence[JobId]
) -> list[Row]:
    """Release the pending partial steps of ``ids`` (locked) that no longer wait.

    The steps they wait for are read by this later statement, whose fresh
    snapshot sees every step ended by a transaction that held these locks
    before: of two calls ending a partial step's last dependencies at once,
    exactly one sees them all ended and releases it.
    """
    moves = cur.execute(_ready_partial(tables), {**params, "ids": list(ids)}).fetchall()
    if not moves:
        return []
    moves = [{**move, "partial": True} for move in moves]
    steps = _records_of(cur, tables, params, moves)
    return cur.execute(_release(tables), _moves(params, moves, steps)).fetchall()


def _move_callbacks(
    cur: Cursor[Row],
    tables: Tables,
    params: Params,
    changes: Mapping[WorkflowId, WorkflowState],
    callbacks: Mapping[WorkflowId, JobId],
    dead: Mapping[WorkflowId, Sequence[JobId]],
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
    first = _first_counted(cur, tables, params, {w: dead[w] for w in failed})
    steps = {
        row["id"]: job_record(row)
        for row in cur.execute(
            statements.select_jobs(tables), {**params, "ids": [first[w] for w in failed]}
        )
    }
    own = {
        row["id"]: row["step_args"]
        for row in cur.execute(_own_args(tables), {**params, "ids": [callbacks[w] for w in failed]})
    }
    args = [Json([step_failure(w, steps[first[w]]), *own[callbacks[w]]]) for w in failed]
    values = {**params, "ids": [callbacks[w] for w in failed], "args": args}
    return cur.execute(_release_callbacks(tables), values).fetchall()


def _first_counted(
    cur: Cursor[Row], tables: Tables, params: Params, dead: Mapping[WorkflowId, Sequence[JobId]]
) -> dict[WorkflowId, JobId]:
    """For each workflow, the first of its steps dead in this call that is not tolerated
    (a workflow fails only through one)."""
    wanted = [job_id for ids in dead.values() for job_id in ids]
    rows = cur.execute(_counted(tables), {**params, "ids": wanted})
    counted = {row["id"] for row in rows}
    return {w: next(i for i in ids if i in counted) for w, ids in dead.items()}


def ended_badly(state: str) -> bool:
    """Whether a step in ``state`` cancels its dependents (dead or cancelled)."""
    return state in FINISHED_JOB_STATES and state != JobState.SUCCEEDED
