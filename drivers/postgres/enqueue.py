"""Enqueueing into PostgreSQL: one statement per call, on any connection.

The statements are shared by :meth:`PostgresDriver.enqueue` (on the driver's
pool) and by transactional enqueue (on the caller's own connection, inside
the caller's transaction), sync or async: :func:`insert` picks one and builds
its parameters, :func:`created` and :func:`results` read its answer back.

Three shapes of one insert, because each costs what its case needs:

* one request: a plain ``INSERT ... VALUES``, cheaper to parse, plan and run
  than a statement over a set of rows;
* a batch without idempotency keys: every request is stored, in request
  order, so ids ascend with the requests and no join maps rows back;
* a batch with keys: requests whose key is held are left out (see below),
  and the rows are joined back to their requests' ordinals.

A batch travels as one JSON array per field: encoding those is a few calls
into the standard library's C encoder, where typed arrays cost a
Python-level adaptation per job and per field.  Every shape answers with at
most one row: arrays of ids, states and ordinals, and the creation time, what
the database decided.  The rest of a new job's record is its request
(:func:`new_job`), so no stored payload is sent back and decoded.

Idempotency keys are enforced by a unique partial index, never by a read
followed by a write: the insert skips requests whose key is already held
(stored, or earlier in the batch) and ``ON CONFLICT DO NOTHING`` absorbs a
concurrent insert of the same key.  A request that stored nothing is then
answered by :func:`held_statement`, which reads the key's holder in a fresh
snapshot, so it sees a holder committed by another transaction meanwhile.

A keyed insert first lets the keys' last takers whose scope has ended give
their keys up (:mod:`taskharbor.spec.keys`): the ``given_up`` step of the same
statement moves such a job's key to ``given_up_key``, and an ``InitPlan`` on it
(``(SELECT count(*) FROM given_up)``) makes it run before the first row is
inserted.  The unique index then admits the new job: the old index entry points
to a row version this transaction replaced, which a uniqueness check ignores.
Two calls racing for one given-up key serialise on that row's lock; the second
finds the key moved and its own insert stopped by the first's new job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql

from taskharbor.spec import (
    EnqueueRequest,
    EnqueueResult,
    JobId,
    JobRecord,
    JobState,
    TaskHarborError,
)
from taskharbor.spec.keys import KeyHold, KeyScope, key_window, scope_text
from taskharbor.spec.retry import policy_text
from taskharbor.spec.table import FINISHED_JOB_STATES

from .flow import FLOW_PARAMS, flow_columns, flow_params
from .rows import job_columns, job_record
from .tables import Tables, statement
from .transitions import enqueue_case, job_state, job_states

_COLUMNS = """task, queue, state, args, kwargs, priority, run_at,
                         attempt, max_attempts, created_at, idempotency_key, retry, headers,
                         flow, flow_key, flow_sequence, flow_locks, tags, meta, key_scope,
                         key_until"""

_GIVE_UP = """
given_up AS (
    UPDATE {{jobs}} g SET given_up_key = g.idempotency_key, idempotency_key = NULL
    WHERE g.idempotency_key {keys}
      AND ((g.key_scope = %(key_unfinished)s AND g.state IN {{finished}})
           OR g.key_until <= {{now}})
    RETURNING g.id
)"""
"""The keys' last takers whose scope has ended give their keys up (one probe per key)."""

_GIVEN_UP_FIRST = "(SELECT count(*) FROM given_up) >= 0"
"""An InitPlan on ``given_up``: it runs, in full, before the first row is inserted."""

_ON_CONFLICT = "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"

_ONE_VALUES = """%(task)s::text, %(queue)s::text, {first_state}, %(args)s::json,
        %(kwargs)s::json, %(priority)s::smallint, COALESCE({run_at}, {now}), 0,
        %(max_attempts)s::integer, {now}, %(key)s::text, %(retry)s::text, %(headers)s::json,
        %(flow)s::text, %(flow_key)s::text, %(flow_sequence)s::text, %(flow_locks)s::text[],
        %(tags)s::text[], %(meta)s::json, %(key_scope)s::text, {now} + %(key_window)s::interval"""

_ONE_RETURNING = """
RETURNING j.created_at, ARRAY[j.id] AS ids, ARRAY[j.state] AS states, NULL::bigint[] AS ords
    {notify}
"""

_INSERT_ONE = f"""
INSERT INTO {{jobs}} AS j ({_COLUMNS})
VALUES ({_ONE_VALUES})
{_ON_CONFLICT}{_ONE_RETURNING}"""

_INSERT_ONE_KEYED = f"""
WITH {_GIVE_UP.format(keys="= %(key)s::text")}
INSERT INTO {{jobs}} AS j ({_COLUMNS})
SELECT {_ONE_VALUES}
WHERE {_GIVEN_UP_FIRST}
{_ON_CONFLICT}{_ONE_RETURNING}"""

_INPUT = """
WITH input AS (
    SELECT i.task, i.queue, i.args, i.kwargs, i.priority::smallint AS priority,
           i.run_at::timestamptz AS run_at, i.max_attempts::integer AS max_attempts,
           i.idempotency_key, i.retry, i.headers, i.flow, i.flow_key,
           i.flow_sequence, i.flow_locks::text[] AS flow_locks,
           ARRAY(SELECT json_array_elements_text(i.tags)) AS tags, i.meta, i.key_scope,
           i.key_window::bigint * interval '1 microsecond' AS key_window, i.ord
    FROM ROWS FROM (
        json_array_elements_text(%(task)s::json), json_array_elements_text(%(queue)s::json),
        json_array_elements(%(args)s::json), json_array_elements(%(kwargs)s::json),
        json_array_elements_text(%(priority)s::json), json_array_elements_text(%(run_at)s::json),
        json_array_elements_text(%(max_attempts)s::json), json_array_elements_text(%(key)s::json),
        json_array_elements_text(%(retry)s::json), json_array_elements(%(headers)s::json),
        json_array_elements_text(%(flow)s::json), json_array_elements_text(%(flow_key)s::json),
        json_array_elements_text(%(flow_sequence)s::json),
        json_array_elements_text(%(flow_locks)s::json),
        json_array_elements(%(tags)s::json), json_array_elements(%(meta)s::json),
        json_array_elements_text(%(key_scope)s::json),
        json_array_elements_text(%(key_window)s::json)
    ) WITH ORDINALITY
    AS i(task, queue, args, kwargs, priority, run_at, max_attempts, idempotency_key, retry,
         headers, flow, flow_key, flow_sequence, flow_locks, tags, meta, key_scope, key_window,
         ord)
),"""

_SELECTED = """f.task, f.queue, {first_state}, f.args, f.kwargs, f.priority,
           COALESCE({run_at}, {now}), 0, f.max_attempts, {now}, f.idempotency_key, f.retry,
           f.headers, f.flow, f.flow_key, f.flow_sequence, f.flow_locks, f.tags, f.meta,
           f.key_scope, {now} + f.key_window"""

_DECIDED = """min(j.created_at) AS created_at,
       array_agg(j.id ORDER BY j.id) AS ids, array_agg(j.state ORDER BY j.id) AS states"""

_INSERT_UNKEYED = f"""{_INPUT}
inserted AS (
    INSERT INTO {{jobs}} AS j ({_COLUMNS})
    SELECT {_SELECTED}
    FROM input f ORDER BY f.ord
    RETURNING j.id, j.state, j.queue, j.created_at
)
SELECT {_DECIDED}, NULL::bigint[] AS ords {{notify}} FROM inserted j
"""

_INSERT_KEYED = f"""{_INPUT}{_GIVE_UP.format(keys="IN (SELECT i.idempotency_key FROM input i)")},
fresh AS (
    SELECT nextval(%(job_ids)s::regclass) AS id, f.*
    FROM (
        SELECT i.* FROM input i
        WHERE {_GIVEN_UP_FIRST}
          AND (i.idempotency_key IS NULL
           OR (NOT EXISTS (SELECT 1 FROM {{jobs}} held
                           WHERE held.idempotency_key = i.idempotency_key
                             AND held.id NOT IN (SELECT id FROM given_up))
               AND NOT EXISTS (SELECT 1 FROM input earlier
                               WHERE earlier.idempotency_key = i.idempotency_key
                                 AND earlier.ord < i.ord)))
        ORDER BY i.ord
    ) f
),
inserted AS (
    INSERT INTO {{jobs}} AS j (id, {_COLUMNS})
    SELECT f.id, {_SELECTED}
    FROM fresh f
    {_ON_CONFLICT}
    RETURNING j.id, j.state, j.queue, j.created_at
)
SELECT {_DECIDED}, array_agg(f.ord ORDER BY j.id) AS ords {{notify}}
FROM inserted j JOIN fresh f ON f.id = j.id
"""

_NOTIFY_ONE = (
    ", CASE WHEN j.state = {available} THEN pg_notify(%(channel)s, j.queue) END AS notified"
)

_NOTIFY_SET = """,
(SELECT count(pg_notify(%(channel)s, ready.queue))
 FROM (SELECT DISTINCT queue FROM inserted WHERE state = {available}) ready) AS notified
"""

_SHAPES = {
    "one": (_INSERT_ONE, "%(run_at)s::timestamptz", _NOTIFY_ONE),
    "one keyed": (_INSERT_ONE_KEYED, "%(run_at)s::timestamptz", _NOTIFY_ONE),
    "unkeyed": (_INSERT_UNKEYED, "f.run_at", _NOTIFY_SET),
    "keyed": (_INSERT_KEYED, "f.run_at", _NOTIFY_SET),
}
"""Each shape's template, the expression of its requests' ``run_at``, and its wake-up."""


def insert(
    tables: Tables, requests: Sequence[EnqueueRequest], now: datetime | None, *, notify: bool
) -> tuple[bytes, dict[str, Any]]:
    """The statement that stores ``requests``, and its parameters.

    With ``notify``, listeners of the tables' channel are woken when the jobs
    that became available are committed.
    """
    params = tables.params(now)
    if notify:
        params["channel"] = tables.channel
    if len(requests) == 1:
        shape = "one" if requests[0].idempotency_key is None else "one keyed"
        return _insert(tables, shape, notify=notify), params | _one_params(requests[0])
    keyed = any(request.idempotency_key is not None for request in requests)
    shape = "keyed" if keyed else "unkeyed"
    return _insert(tables, shape, notify=notify), params | _many_params(requests)


@statement
def _insert(tables: Tables, shape: str, *, notify: bool) -> sql.Composed:
    """The insert of ``shape`` (one of :data:`_SHAPES`), waking listeners if ``notify``."""
    template, run_at, wake = _SHAPES[shape]
    due = sql.SQL(run_at)
    first_state = enqueue_case(
        {
            "waits_on_dependencies": sql.SQL("FALSE"),
            "run_at_in_future": sql.SQL("COALESCE({due}, {now}) > {now}").format(
                due=due, now=tables.now
            ),
        }
    )
    notify_sql = (
        sql.SQL(wake).format(available=job_state(JobState.AVAILABLE)) if notify else sql.SQL("")
    )
    return tables.sql(
        template,
        first_state=first_state,
        run_at=due,
        notify=notify_sql,
        finished=job_states(FINISHED_JOB_STATES),
    )


def _one_params(request: EnqueueRequest) -> dict[str, Any]:
    return {
        "task": request.task,
        "queue": request.queue,
        "args": json.dumps(list(request.args)) if request.args else "[]",
        "kwargs": json.dumps(dict(request.kwargs)) if request.kwargs else "{}",
        "priority": request.priority,
        "run_at": request.run_at,
        "max_attempts": request.max_attempts,
        "key": request.idempotency_key,
        "retry": policy_text(request.retry),
        "headers": json.dumps(dict(request.headers)) if request.headers else "{}",
        "tags": list(request.tags),
        "meta": json.dumps(dict(request.meta)) if request.meta else "{}",
        **dict(zip(FLOW_PARAMS, flow_columns(request.flow, request.task), strict=True)),
        "key_scope": scope_text(request.key_scope),
        "key_window": key_window(request.key_scope),
        "key_unfinished": KeyHold.UNFINISHED.value,
    }


def _many_params(requests: Sequence[EnqueueRequest]) -> dict[str, str]:
    """Each field of ``requests`` as one JSON array, in request order."""
    return {
        "task": json.dumps([r.task for r in requests]),
        "queue": json.dumps([r.queue for r in requests]),
        "args": json.dumps([list(r.args) for r in requests]),
        "kwargs": json.dumps([dict(r.kwargs) for r in requests]),
        "priority": json.dumps([r.priority for r in requests]),
        "run_at": json.dumps(
            [None if r.run_at is None else r.run_at.isoformat() for r in requests]
        ),
        "max_attempts": json.dumps([r.max_attempts for r in requests]),
        "key": json.dumps([r.idempotency_key for r in requests]),
        "retry": json.dumps([policy_text(r.retry) for r in requests]),
        "headers": json.dumps([dict(r.headers) for r in requests]),
        "tags": json.dumps([list(r.tags) for r in requests]),
        "meta": json.dumps([dict(r.meta) for r in requests]),
        **{name: json.dumps(values) for name, values in flow_params(requests).items()},
        "key_scope": json.dumps([scope_text(r.key_scope) for r in requests]),
        "key_window": json.dumps([_window_micros(r.key_scope) for r in requests]),
        "key_unfinished": KeyHold.UNFINISHED.value,
    }


def _window_micros(scope: KeyScope) -> int | None:
    """A window scope's length in whole microseconds (exact, as the spec rounds it)."""
    window = key_window(scope)
    return None if window is None else window // timedelta(microseconds=1)


def created(
    requests: Sequence[EnqueueRequest], row: Mapping[str, Any] | None
) -> dict[int, JobRecord]:
    """The jobs the insert stored, by the (1-based) ordinal of their request.

    ``row`` is the insert's answer: none when a single request's key was
    held, else arrays that are NULL when nothing was stored.  Its ``ords`` is
    NULL when the shape stores every request in request order, so that ids
    ascend with the requests.
    """
    if row is None or not row["ids"]:
        return {}
    ids: list[JobId] = row["ids"]
    ords = row["ords"] or range(1, len(ids) + 1)
    at = row["created_at"].astimezone(UTC)
    return {
        ordinal: new_job(requests[ordinal - 1], job_id, JobState(state), at)
        for ordinal, job_id, state in zip(ords, ids, row["states"], strict=True)
    }


def new_job(request: EnqueueRequest, job_id: JobId, state: JobState, at: datetime) -> JobRecord:
    """The record of a job just stored from ``request`` as ``job_id`` in ``state`` at ``at``.

    The payload is a copy, as reading the row would give: the record shares
    no list or dict with the caller's request.
    """
    return JobRecord(
        id=job_id,
        task=request.task,
        queue=request.queue,
        state=state,
        args=tuple(json.loads(json.dumps(list(request.args)))) if request.args else (),
        kwargs=json.loads(json.dumps(dict(request.kwargs))) if request.kwargs else {},
        priority=request.priority,
        run_at=at if request.run_at is None else request.run_at.astimezone(UTC),
        attempt=0,
        max_attempts=request.max_attempts,
        created_at=at,
        idempotency_key=request.idempotency_key,
        retry=request.retry,
        headers=dict(request.headers),
        flow=request.flow,
        tags=request.tags,
        meta=json.loads(json.dumps(dict(request.meta))) if request.meta else {},
        key_scope=request.key_scope,
    )


class KeyReleased(TaskHarborError):
    """A key's holder was pruned between the insert and the read of its holder: retry."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was released while this batch was enqueued; enqueue again"
        )


@statement
def held_statement(tables: Tables) -> sql.Composed:
    """The jobs holding the idempotency keys ``%(keys)s``."""
    return tables.sql(
        "SELECT {columns} FROM {jobs} j WHERE j.idempotency_key = ANY(%(keys)s::text[])",
        columns=job_columns(),
    )


def unanswered_keys(
    requests: Sequence[EnqueueRequest], stored: Mapping[int, JobRecord]
) -> list[str]:
    """Keys of the requests that stored nothing and whose holder is not in ``stored``."""
    if len(stored) == len(requests):
        return []
    inserted_keys = {job.idempotency_key for job in stored.values()}
    return sorted(
        {
            r.idempotency_key
            for ordinal, r in enumerate(requests, start=1)
            if ordinal not in stored
            and r.idempotency_key is not None
            and r.idempotency_key not in inserted_keys
        }
    )


def results(
    requests: Sequence[EnqueueRequest],
    stored: Mapping[int, JobRecord],
    held: Sequence[Mapping[str, Any]],
) -> list[EnqueueResult]:
    """One result per request; :class:`KeyReleased` when a key's holder vanished meanwhile."""
    if len(stored) == len(requests):  # every request stored its job
        return [
            EnqueueResult(stored[ordinal], created=True) for ordinal in range(1, len(stored) + 1)
        ]
    holders: dict[str, JobRecord] = {
        job.idempotency_key: job for job in stored.values() if job.idempotency_key is not None
    }
    for row in held:
        holders[row["idempotency_key"]] = job_record(row)
    answered: list[EnqueueResult] = []
    for ordinal, request in enumerate(requests, start=1):
        if ordinal in stored:
            answered.append(EnqueueResult(stored[ordinal], created=True))
        elif request.idempotency_key in holders:
            answered.append(EnqueueResult(holders[request.idempotency_key], created=False))
        else:
            raise KeyReleased(str(request.idempotency_key))
    return answered
