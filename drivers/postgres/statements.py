"""The PostgreSQL driver's statements for jobs, built from the spec's transition table.

Each builder returns one statement; the driver runs it with ``Tables.params``
plus its own values.  Target states come from :func:`target_case` (the
compiled ``JOB.options``), never from state names written here.

The fenced statements (heartbeat, complete, fail, snooze) share one shape: the
batch arrives as arrays unnested in request order; the rows whose lease is
live (``running`` with the item's token, checked in SQL) are locked in id
order and updated; one result row per item says whether it was applied, the
job's state, or that the job does not exist.
"""

from __future__ import annotations

from collections.abc import Mapping

from psycopg import sql

from taskharbor.spec import FINISHED_JOB_STATES, QUEUED_JOB_STATES, JobEvent, JobState
from taskharbor.spec.records import PRUNABLE_WORKFLOW_STATES

from ..finished_watches import ANY_JOB, NOTICE_MAX_ITEMS
from .flow import heads_table
from .queues import paused_table
from .rows import job_columns
from .tables import Tables, statement
from .transitions import (
    enqueue_case,
    event_sources,
    job_state,
    job_states,
    state_literals,
    target_case,
    workflow_state,
)
from .workers import SEEN_BY_HEARTBEAT

_LEASE_CLEARED = (
    "lease_token = NULL, lease_expires_at = NULL, leased_by = NULL, cancel_requested = false"
)

_FENCED = """
WITH input AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::text[] {arrays}) WITH ORDINALITY
        AS i(id, token {names}, ord)
),
live AS (
    SELECT j.id, {target} AS target
    FROM {jobs} j JOIN input i ON i.id = j.id
    WHERE j.state IN {sources} AND j.lease_token = i.token
    ORDER BY j.id FOR UPDATE OF j
),
applied AS (
    UPDATE {jobs} j SET state = l.target, {assignments}
    FROM live l JOIN input i ON i.id = l.id
    WHERE j.id = l.id
    RETURNING j.id, j.state, j.queue, j.workflow_id, j.cancel_requested, j.leased_by
){seen}{notice}
SELECT i.id, i.token, a.id IS NOT NULL AS applied, COALESCE(a.state, j.state) AS state,
       a.workflow_id, a.cancel_requested, j.id IS NULL AS missing{noticed}
FROM input i LEFT JOIN applied a ON a.id = i.id LEFT JOIN {jobs} j ON j.id = i.id
ORDER BY i.ord
"""

_GUARDS: Mapping[str, sql.Composable] = {
    "cancel_requested": sql.SQL("j.cancel_requested"),
    "attempts_exhausted": sql.SQL("j.attempt >= j.max_attempts"),
    "permanent": sql.SQL("i.permanent"),
}
"""Each guard of the fenced events and of ``lease_expired``, as a predicate on the row."""


def _ends(target: str) -> dict[str, sql.Composable]:
    """Shared pieces: ``finished_at`` and ``reason`` for a row moving to ``target``."""
    return {
        "finished": job_states(FINISHED_JOB_STATES),
        "cancelled": job_state(JobState.CANCELLED),
        "target_col": sql.SQL(target),
    }


_ENDING = """
    finished_at = CASE WHEN {target_col} IN {finished} THEN {now} ELSE j.finished_at END,
    reason = CASE WHEN {target_col} = {cancelled} THEN COALESCE(j.reason, %(by_request)s) END
"""
"""A job leaving ``running``: a cancelled one keeps the reason its workflow's cancel
recorded, else gets ``%(by_request)s``; any other target clears it."""


_FINISHED_NOTICE = """,
notice AS MATERIALIZED (
    SELECT pg_notify(%(finished_channel)s, CASE WHEN count(*) <= {most} THEN
        string_agg(a.id::text || COALESCE(',w' || a.workflow_id, ''), ',') ELSE {any} END)
    FROM applied a WHERE a.state IN {finished} HAVING count(*) > 0
)"""
"""One notice for the jobs the statement finished, with their workflows (whose
cascades the call finishes next): :mod:`taskharbor.drivers.finished_watches`."""


@statement
def fenced(tables: Tables, event: JobEvent, *, notify: bool = False) -> sql.Composed:
    """The fenced statement of ``event`` (heartbeat, succeed, fail or snooze).

    With ``notify``, a statement that finishes jobs sends one notice on
    ``%(finished_channel)s`` (read once, by the first row's ``noticed``).
    """
    arrays, names, assignments = _FENCED_PARTS[event]
    notice: sql.Composable = sql.SQL("")
    noticed: sql.Composable = sql.SQL("")
    if notify and event is not JobEvent.HEARTBEAT:
        notice = sql.SQL(_FINISHED_NOTICE).format(
            most=sql.Literal(NOTICE_MAX_ITEMS),
            any=sql.Literal(ANY_JOB),
            finished=job_states(FINISHED_JOB_STATES),
        )
        noticed = sql.SQL(", (SELECT count(*) FROM notice) AS noticed")
    body = sql.SQL(assignments).format(
        now=tables.now,
        retrying=job_state(JobState.RETRYING),
        scheduled=job_state(JobState.SCHEDULED),
        ending=sql.SQL(_ENDING).format(now=tables.now, **_ends("l.target")),
    )
    seen = SEEN_BY_HEARTBEAT if event is JobEvent.HEARTBEAT else ""
    return tables.sql(
        _FENCED,
        seen=sql.SQL(seen).format(workers=sql.Identifier(tables.schema, "workers"), now=tables.now),
        arrays=sql.SQL(arrays),
        names=sql.SQL(names),
        target=target_case(event, _GUARDS),
        sources=job_states(event_sources(event)),
        assignments=body,
        notice=notice,
        noticed=noticed,
    )


_FENCED_PARTS: Mapping[JobEvent, tuple[str, str, str]] = {
    JobEvent.HEARTBEAT: (
        ", %(progress)s::float8[], %(messages)s::text[]",
        ", progress, message",
        "lease_expires_at = {now} + make_interval(secs => %(seconds)s),"
        " progress = COALESCE(i.progress, j.progress),"
        " progress_message = CASE WHEN i.progress IS NULL THEN j.progress_message"
        " ELSE i.message END",
    ),
    JobEvent.SUCCEED: (
        ", %(results)s::json[]",
        ", result",
        "result = i.result, {ending}, " + _LEASE_CLEARED,
    ),
    JobEvent.FAIL: (
        ", %(reports)s::json[], %(retry_at)s::timestamptz[], %(permanent)s::boolean[]",
        ", report, retry_at, permanent",
        "errors = j.errors || json_build_object('attempt', j.attempt, 'at', {now},"
        " 'report', i.report),"
        " run_at = CASE WHEN l.target = {retrying} THEN COALESCE(i.retry_at, {now})"
        " ELSE j.run_at END, {ending}, " + _LEASE_CLEARED,
    ),
    JobEvent.SNOOZE: (
        ", %(run_at)s::timestamptz[]",
        ", run_at",
        "attempt = j.attempt - 1,"
        " run_at = CASE WHEN l.target = {scheduled} THEN i.run_at ELSE j.run_at END,"
        " {ending}, " + _LEASE_CLEARED,
    ),
}


_LEASE = """
WITH bound AS (
    SELECT h.rank, h.run_at, h.id FROM {heads} h WHERE {hinted_queues}
    ORDER BY h.rank, h.run_at, h.id LIMIT 1
),
picked AS (
    SELECT j.id FROM {jobs} j
    WHERE j.state = {available} AND j.flow IS NULL AND {in_queues}
    ORDER BY j.priority DESC, j.run_at, j.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
leased AS (
    UPDATE {jobs} j
    SET state = {target}, attempt = j.attempt + 1,
        lease_token = replace(gen_random_uuid()::text, '-', ''),
        lease_expires_at = {now} + make_interval(secs => %(seconds)s),
        leased_by = %(worker)s, progress = NULL, progress_message = NULL
    FROM picked WHERE j.id = picked.id AND NOT EXISTS (
        SELECT 1 FROM bound b
        WHERE (b.rank, b.run_at, b.id) < (-j.priority::integer, j.run_at, j.id))
    RETURNING {columns}
)
SELECT j.*, p.limited FROM (
    SELECT EXISTS (SELECT 1 FROM bound) AND (SELECT count(*) FROM leased) < %(limit)s AS limited
) p
LEFT JOIN leased j ON TRUE
"""


_ONE_QUEUE_HINTS = "h.queue = (%(queues)s::text[])[1]"
_QUEUES_HINTS = "h.queue = ANY(%(queues)s::text[])"
"""The hints the plain lease reads: of its one queue by equality (the index's order)."""


@statement
def lease(tables: Tables, *, one_queue: bool) -> sql.Composed:
    """Lease up to ``%(limit)s`` available jobs of ``%(queues)s``; never one job twice.

    Only jobs without flow limits are leased here, and only those ahead of the
    earliest hint of the heads table (:mod:`.flow`), a lower bound of every
    available limited job's position: ahead of it no limited job can come first.
    The answer has one row per leased job, or one row of NULLs when none was, and
    ``limited`` on every row says whether the lease came short with a hint in its
    queues, so the caller goes on through ``lease_limited``.  A store without
    limited jobs pays one probe of an empty index for it.

    With ``one_queue`` the queue test is an equality, so the planner walks the
    lease index (queue, priority, run_at, id) in order and stops at the limit;
    ``queue = ANY(...)`` cannot use that order and sorts the candidates instead.
    """
    hinted = _ONE_QUEUE_HINTS if one_queue else _QUEUES_HINTS
    return tables.sql(
        _LEASE,
        heads=heads_table(tables.schema),
        hinted_queues=sql.SQL(hinted),
        in_queues=unpaused_queues(tables, one_queue=one_queue),
        available=job_state(JobState.AVAILABLE),
        target=target_case(JobEvent.LEASE, {}),
        columns=job_columns(),
    )


def unpaused_queues(tables: Tables, *, one_queue: bool) -> sql.Composed:
    """``j.queue`` is one of ``%(queues)s`` that is not paused.

    The pauses are read once per statement, before the jobs: with one queue a
    ``NOT EXISTS`` the planner evaluates once (a one-time filter), with several
    an array of the unpaused ones; either way a paused queue's backlog is never
    walked.
    """
    paused = paused_table(tables.schema)
    if one_queue:
        return sql.SQL(
            "j.queue = (%(queues)s::text[])[1] AND NOT EXISTS"
            " (SELECT 1 FROM {paused} p WHERE p.name = (%(queues)s::text[])[1])"
        ).format(paused=paused)
    return sql.SQL(
        "j.queue = ANY(ARRAY(SELECT q FROM unnest(%(queues)s::text[]) AS q"
        " WHERE NOT EXISTS (SELECT 1 FROM {paused} p WHERE p.name = q)))"
    ).format(paused=paused)


_PROMOTE = """
WITH due AS (
    SELECT j.id, {target} AS target FROM {jobs} j
    WHERE j.state IN {due} AND j.run_at <= {now}
    ORDER BY j.id FOR UPDATE SKIP LOCKED
)
UPDATE {jobs} j SET state = due.target FROM due WHERE j.id = due.id
RETURNING j.queue, j.state
"""

_NEXT_DUE = "SELECT min(j.run_at) AS next_due FROM {jobs} j WHERE j.state IN {due}"


@statement
def promote(tables: Tables) -> sql.Composed:
    """Promote every due job, skipping rows another promoter holds."""
    due = job_states(event_sources(JobEvent.PROMOTE))
    return tables.sql(_PROMOTE, target=target_case(JobEvent.PROMOTE, {}), due=due)


@statement
def next_due(tables: Tables) -> sql.Composed:
    """When the earliest scheduled or retrying job is due."""
    return tables.sql(_NEXT_DUE, due=job_states(event_sources(JobEvent.PROMOTE)))


_EXPIRED = """
SELECT j.id, j.attempt, j.retry FROM {jobs} j
WHERE j.state IN {leased} AND j.lease_expires_at <= {now}
ORDER BY j.id FOR UPDATE SKIP LOCKED
"""


@statement
def expired(tables: Tables) -> sql.Composed:
    """Lock the running jobs whose lease ran out (skipping those another call holds),
    with what their retry delays are computed from."""
    return tables.sql(_EXPIRED, leased=job_states(event_sources(JobEvent.LEASE_EXPIRED)))


_RESCUE = """
WITH expired AS (
    SELECT j.id, {target} AS target, e.delay_us
    FROM unnest(%(ids)s::bigint[], %(delays_us)s::bigint[]) AS e(id, delay_us)
    JOIN {jobs} j ON j.id = e.id
)
UPDATE {jobs} j
SET state = e.target,
    errors = j.errors || json_build_object('attempt', j.attempt, 'at', {now},
                                           'report', %(report)s::json),
    run_at = CASE WHEN e.target = {retrying}
                  THEN {now} + e.delay_us * interval '1 microsecond' ELSE j.run_at END,
    {ending}, {cleared}
FROM expired e WHERE j.id = e.id
RETURNING j.id, j.state, j.queue, j.workflow_id
"""


@statement
def rescue(tables: Tables) -> sql.Composed:
    """Event ``lease_expired`` for the jobs ``ids`` (locked by :func:`expired`); a job
    going to ``retrying`` waits its ``delays_us`` (its policy's delay, in microseconds)."""
    return tables.sql(
        _RESCUE,
        target=target_case(JobEvent.LEASE_EXPIRED, _GUARDS),
        retrying=job_state(JobState.RETRYING),
        ending=sql.SQL(_ENDING).format(now=tables.now, **_ends("e.target")),
        cleared=sql.SQL(_LEASE_CLEARED),
    )


@statement
def states_of(tables: Tables) -> sql.Composed:
    """The state and workflow of the jobs ``%(ids)s`` (what ``wait_for_finished`` reads)."""
    return tables.sql("SELECT j.id, j.state, j.workflow_id FROM {jobs} j WHERE j.id = ANY(%(ids)s)")


_LOCK_FOR_OPERATOR = """
SELECT j.id, j.state, j.workflow_id FROM {jobs} j
WHERE j.id = ANY(%(ids)s::bigint[]) ORDER BY j.id FOR UPDATE
"""


@statement
def lock_for_operator(tables: Tables) -> sql.Composed:
    """Lock the jobs an operator names (cancel, requeue), reading their states."""
    return tables.sql(_LOCK_FOR_OPERATOR)


_ASK_TO_CANCEL = """
UPDATE {jobs} j SET cancel_requested = true{recorded}
WHERE j.state = {running} AND {which}
"""


@statement
def ask_to_cancel(tables: Tables, which: str, *, with_reason: bool = False) -> sql.Composed:
    """Set ``cancel_requested`` on the running jobs ``which`` selects; ``with_reason``
    also records ``%(reason)s``, the reason the cancel will resolve with."""
    recorded = sql.SQL(", reason = %(reason)s") if with_reason else sql.SQL("")
    return tables.sql(
        _ASK_TO_CANCEL,
        running=job_state(JobState.RUNNING),
        which=sql.SQL(which),
        recorded=recorded,
    )


_CANCEL_WORKFLOW_STEPS = """
WITH queued AS (
    SELECT j.id, {target} AS target FROM {jobs} j
    WHERE j.workflow_id = %(workflow_id)s AND j.state IN {queued}
    ORDER BY j.id FOR UPDATE
)
UPDATE {jobs} j SET state = q.target, finished_at = {now}, reason = %(reason)s
FROM queued q WHERE j.id = q.id
"""


@statement
def cancel_workflow_steps(tables: Tables) -> sql.Composed:
    """Cancel every queued step of ``%(workflow_id)s`` with ``%(reason)s`` (a dead one
    stays in the dead-letter queue)."""
    return tables.sql(
        _CANCEL_WORKFLOW_STEPS,
        target=target_case(JobEvent.CANCEL, {}),
        queued=job_states(QUEUED_JOB_STATES),
    )


_PRUNED_JOBS = """
    SELECT j.id FROM {jobs} j
    WHERE j.workflow_id IS NULL AND j.state IN {finished} AND j.state = ANY(%(states)s::text[])
      AND j.finished_at < %(before)s"""

_PRUNED_WORKFLOWS = """
    SELECT w.id FROM {workflows} w
    WHERE w.state IN {prunable} AND w.finished_at < %(before)s
      AND NOT EXISTS (
          SELECT 1 FROM {jobs} j
          WHERE j.workflow_id = w.id
            AND NOT (j.state = ANY(%(states)s::text[]) AND j.finished_at < %(before)s))"""
"""What a prune deletes: old finished jobs in ``%(states)s`` outside workflows, and the
finished workflows whose every step is such a job (with those steps)."""

_PRUNE_JOBS = (
    "WITH doomed AS ("
    + _PRUNED_JOBS
    + """
    ORDER BY j.finished_at LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {jobs} j USING doomed d WHERE j.id = d.id
"""
)

_COUNT_PRUNABLE = (
    "SELECT (SELECT count(*) FROM ("
    + _PRUNED_JOBS
    + ") single) + (SELECT count(*) FROM {jobs} s WHERE s.workflow_id IN ("
    + _PRUNED_WORKFLOWS
    + ")) AS n"
)

_PRUNE_WORKFLOWS = (
    "WITH doomed AS ("
    + _PRUNED_WORKFLOWS
    + """
    ORDER BY w.id LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
),
steps AS (DELETE FROM {jobs} j USING doomed d WHERE j.workflow_id = d.id RETURNING j.id),
gone AS (DELETE FROM {workflows} w USING doomed d WHERE w.id = d.id RETURNING w.id)
SELECT (SELECT count(*) FROM steps) AS jobs, (SELECT count(*) FROM gone) AS workflows
"""
)


def _prune_parts() -> dict[str, sql.Composable]:
    return {
        "finished": job_states(FINISHED_JOB_STATES),
        "prunable": sql.SQL("({})").format(
            sql.SQL(", ").join(workflow_state(state) for state in sorted(PRUNABLE_WORKFLOW_STATES))
        ),
    }


@statement
def prune_jobs(tables: Tables) -> sql.Composed:
    """Delete one batch of old finished jobs that belong to no workflow."""
    return tables.sql(_PRUNE_JOBS, **_prune_parts())


@statement
def prune_workflows(tables: Tables) -> sql.Composed:
    """Delete one batch of finished workflows whose steps all qualify, with their steps."""
    return tables.sql(_PRUNE_WORKFLOWS, **_prune_parts())


@statement
def count_prunable(tables: Tables) -> sql.Composed:
    """How many jobs a prune with the same parameters would delete (a dry run)."""
    return tables.sql(_COUNT_PRUNABLE, **_prune_parts())


_WORKFLOW_INSERT = """
WITH workflow AS (
    INSERT INTO {workflows} (id, name, state, steps, result, created_at, idempotency_key)
    VALUES (%(workflow_id)s, %(name)s, %(state)s, %(steps)s, %(result)s, {now}, %(key)s)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
),
input AS (
    SELECT * FROM unnest(
        %(ids)s::bigint[], %(task)s::text[], %(queue)s::text[], %(args)s::json[],
        %(kwargs)s::json[], %(priority)s::smallint[], %(run_at)s::timestamptz[],
        %(max_attempts)s::integer[], %(depends_on)s::json[], %(input_ref)s::json[],
        %(retry)s::text[], %(headers)s::json[], %(flow)s::text[], %(flow_key)s::text[],
        %(flow_sequence)s::text[], %(flow_locks)s::text[], %(partial)s::boolean[],
        %(tolerated)s::boolean[], %(tags)s::json[], %(meta)s::json[]
    ) AS i(id, task, queue, args, kwargs, priority, run_at, max_attempts, depends_on, input_ref,
           retry, headers, flow, flow_key, flow_sequence, flow_locks, partial, tolerated, tags,
           meta)
),
steps AS (
    SELECT i.*, ARRAY(SELECT json_array_elements_text(i.depends_on)::bigint) AS after
    FROM input i
),
inserted AS (
    INSERT INTO {jobs} (id, task, queue, state, args, kwargs, priority, run_at, attempt,
                        max_attempts, created_at, workflow_id, depends_on, waiting_on,
                        step_args, input_ref, retry, headers, flow, flow_key,
                        flow_sequence, flow_locks, partial, tolerated, tags, meta)
    SELECT s.id, s.task, s.queue, {first_state}, s.args, s.kwargs, s.priority,
           COALESCE(s.run_at, {now}), 0, s.max_attempts, {now}, %(workflow_id)s, s.after,
           cardinality(s.after), s.args, s.input_ref, s.retry, s.headers, s.flow,
           s.flow_key, s.flow_sequence, s.flow_locks::text[], s.partial, s.tolerated,
           ARRAY(SELECT json_array_elements_text(s.tags)), s.meta
    FROM steps s
    WHERE EXISTS (SELECT FROM workflow)
    RETURNING queue, state
)
SELECT w.*, ARRAY(SELECT DISTINCT queue FROM inserted WHERE state = {available}) AS ready
FROM workflow w
"""


@statement
def insert_workflow(tables: Tables) -> sql.Composed:
    """Insert a workflow and its steps (ids allocated beforehand) in one statement."""
    first_state = enqueue_case(
        {
            "waits_on_dependencies": sql.SQL("cardinality(s.after) > 0"),
            "run_at_in_future": sql.SQL("COALESCE(s.run_at, {now}) > {now}").format(now=tables.now),
        }
    )
    return tables.sql(
        _WORKFLOW_INSERT, first_state=first_state, available=job_state(JobState.AVAILABLE)
    )


@statement
def workflow_by_key(tables: Tables) -> sql.Composed:
    """The workflow holding the idempotency key ``%(key)s``, if any."""
    return tables.sql("SELECT * FROM {workflows} w WHERE w.idempotency_key = %(key)s")


@statement
def select_jobs(tables: Tables) -> sql.Composed:
    """The jobs whose ids are ``%(ids)s``."""
    return tables.sql(
        "SELECT {columns} FROM {jobs} j WHERE j.id = ANY(%(ids)s::bigint[])",
        columns=job_columns(),
    )


_FILTERS: Mapping[str, str] = {
    "states": "j.state = ANY(%(states)s::text[])",
    # One state as an equality: the (state, id) index then gives the id order (an
    # ANY(array) condition does not, on PostgreSQL 15).
    "state": "j.state = %(state)s",
    "task": "j.task = %(task)s",
    "queue": "j.queue = %(queue)s",
    "workflow_id": "j.workflow_id = %(workflow_id)s",
    "after_id": "j.id > %(after_id)s",
    "before_id": "j.id < %(before_id)s",
    "created_since": "j.created_at >= %(created_since)s",
    # Containment reads the GIN index on tags; repeating its predicate lets the
    # planner use that partial index (untagged jobs are not in it).
    "tag": "j.tags @> ARRAY[%(tag)s::text] AND j.tags <> '{}'",
}
"""The conditions of ``list_jobs``, by the :class:`JobFilter` field that asks for them."""

_ORDER = {False: sql.SQL("ASC"), True: sql.SQL("DESC")}
"""The id order of a listing, by its filter's ``newest_first``."""


@statement
def list_jobs(tables: Tables, filters: tuple[str, ...], newest_first: bool) -> sql.Composed:
    """Jobs matching the conditions of ``filters`` (names of :data:`_FILTERS`), by id."""
    conditions = [sql.SQL(_FILTERS[name]) for name in filters] or [sql.SQL("TRUE")]
    return tables.sql(
        "SELECT {columns} FROM {jobs} j WHERE {conditions} ORDER BY j.id {order} LIMIT %(limit)s",
        columns=job_columns(),
        conditions=sql.SQL(" AND ").join(conditions),
        order=_ORDER[newest_first],
    )


_WORKFLOW_FILTERS: Mapping[str, str] = {
    "states": "w.state = ANY(%(states)s::text[])",
    "name": "w.name = %(name)s",
    "after_id": "w.id > %(after_id)s",
    "before_id": "w.id < %(before_id)s",
}
"""The conditions of ``list_workflows``, by the :class:`WorkflowFilter` field that asks."""


@statement
def list_workflows(tables: Tables, filters: tuple[str, ...], newest_first: bool) -> sql.Composed:
    """Workflows matching the conditions of ``filters`` (names of
    :data:`_WORKFLOW_FILTERS`), by id."""
    conditions = [sql.SQL(_WORKFLOW_FILTERS[name]) for name in filters] or [sql.SQL("TRUE")]
    return tables.sql(
        "SELECT * FROM {workflows} w WHERE {conditions} ORDER BY w.id {order} LIMIT %(limit)s",
        conditions=sql.SQL(" AND ").join(conditions),
        order=_ORDER[newest_first],
    )


@statement
def count_jobs(tables: Tables) -> sql.Composed:
    """How many jobs per queue and state."""
    return tables.sql(
        "SELECT j.queue, j.state, count(*) AS n FROM {jobs} j GROUP BY j.queue, j.state"
    )


@statement
def finished_per_minute(tables: Tables) -> sql.Composed:
    """The finished jobs with ``finished_at >= %(since)s`` (of queue ``%(queue)s`` unless
    it is null), counted per minute (``%(since)s`` is a minute's start), queue and
    state: one range of the index ``jobs_finished_counts``, whose predicate the state
    literals repeat so that the planner can use it."""
    return tables.sql(
        "SELECT date_bin('1 minute', j.finished_at, %(since)s) AS minute, j.queue, j.state,"
        " count(*) AS n FROM {jobs} j"
        " WHERE j.state IN {finished} AND j.finished_at >= %(since)s"
        " AND (%(queue)s::text IS NULL OR j.queue = %(queue)s)"
        " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        finished=state_literals(FINISHED_JOB_STATES),
    )


@statement
def select_workflow(tables: Tables) -> sql.Composed:
    """The workflow whose id is ``%(id)s``."""
    return tables.sql("SELECT * FROM {workflows} w WHERE w.id = %(id)s")


@statement
def any_ready(tables: Tables) -> sql.Composed:
    """Whether a job of ``%(queues)s`` is available (the polling fallback's question)."""
    return tables.sql(
        "SELECT EXISTS (SELECT 1 FROM {jobs} j"
        " WHERE j.state = {available} AND {in_queues}) AS ready",
        available=job_state(JobState.AVAILABLE),
        in_queues=unpaused_queues(tables, one_queue=False),
    )
