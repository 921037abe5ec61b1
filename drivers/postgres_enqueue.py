"""Enqueueing into PostgreSQL: one statement for a whole batch, on any connection.

The statement is shared by :meth:`PostgresDriver.enqueue` (on the driver's
pool) and by transactional enqueue (on the caller's own connection, inside
the caller's transaction), sync or async: :func:`insert_statement` and
:func:`insert_params` build it, :func:`results` reads its rows back.

Idempotency keys are enforced by a unique partial index, never by a read
followed by a write: the insert skips requests whose key is already held
(stored, or earlier in the batch) and ``ON CONFLICT DO NOTHING`` absorbs a
concurrent insert of the same key.  A request that stored nothing is then
answered by :func:`held_statement`, which reads the key's holder in a fresh
snapshot, so it sees a holder committed by another transaction meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Json

from taskharbor.spec import EnqueueRequest, EnqueueResult, JobRecord, JobState, TaskHarborError

from .postgres_rows import job_columns, job_record
from .postgres_sql import enqueue_case, job_state
from .postgres_tables import Tables, statement

_INSERT = """
WITH input AS (
    SELECT * FROM unnest(
        %(task)s::text[], %(queue)s::text[], %(args)s::json[], %(kwargs)s::json[],
        %(priority)s::smallint[], %(run_at)s::timestamptz[], %(max_attempts)s::integer[],
        %(key)s::text[]
    ) WITH ORDINALITY
    AS i(task, queue, args, kwargs, priority, run_at, max_attempts, idempotency_key, ord)
),
fresh AS (
    SELECT nextval(%(job_ids)s::regclass) AS id, f.*
    FROM (
        SELECT i.* FROM input i
        WHERE i.idempotency_key IS NULL
           OR (NOT EXISTS (SELECT 1 FROM {jobs} held
                           WHERE held.idempotency_key = i.idempotency_key)
               AND NOT EXISTS (SELECT 1 FROM input earlier
                               WHERE earlier.idempotency_key = i.idempotency_key
                                 AND earlier.ord < i.ord))
        ORDER BY i.ord
    ) f
),
inserted AS (
    INSERT INTO {jobs} AS j (id, task, queue, state, args, kwargs, priority, run_at,
                             attempt, max_attempts, created_at, idempotency_key)
    SELECT f.id, f.task, f.queue, {first_state}, f.args, f.kwargs, f.priority,
           COALESCE(f.run_at, {now}), 0, f.max_attempts, {now}, f.idempotency_key
    FROM fresh f
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING {columns}
)
SELECT f.ord, j.* {notify} FROM inserted j JOIN fresh f ON f.id = j.id
"""

_NOTIFY = """,
(SELECT count(pg_notify(%(channel)s, ready.queue))
 FROM (SELECT DISTINCT queue FROM inserted WHERE state = {available}) ready) AS notified
"""


@statement
def insert_statement(tables: Tables, *, notify: bool) -> sql.Composed:
    """The batch insert; with ``notify``, listeners of the tables' channel are woken."""
    first_state = enqueue_case(
        {
            "waits_on_dependencies": sql.SQL("FALSE"),
            "run_at_in_future": sql.SQL("COALESCE(f.run_at, {now}) > {now}").format(now=tables.now),
        }
    )
    notify_sql = (
        sql.SQL(_NOTIFY).format(available=job_state(JobState.AVAILABLE)) if notify else sql.SQL("")
    )
    return tables.sql(_INSERT, first_state=first_state, columns=job_columns(), notify=notify_sql)


def insert_params(
    tables: Tables, requests: Sequence[EnqueueRequest], now: datetime | None
) -> dict[str, Any]:
    """The parameters of :func:`insert_statement` for ``requests``."""
    return {
        **tables.params(now),
        "task": [r.task for r in requests],
        "queue": [r.queue for r in requests],
        "args": [Json(list(r.args)) for r in requests],
        "kwargs": [Json(dict(r.kwargs)) for r in requests],
        "priority": [r.priority for r in requests],
        "run_at": [r.run_at for r in requests],
        "max_attempts": [r.max_attempts for r in requests],
        "key": [r.idempotency_key for r in requests],
    }


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
    requests: Sequence[EnqueueRequest], inserted: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Keys of the requests that stored nothing and whose holder is not in ``inserted``."""
    stored = {row["ord"] for row in inserted}
    inserted_keys = {row["idempotency_key"] for row in inserted}
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
    inserted: Sequence[Mapping[str, Any]],
    held: Sequence[Mapping[str, Any]],
) -> list[EnqueueResult]:
    """One result per request; :class:`KeyReleased` when a key's holder vanished meanwhile."""
    created = {row["ord"]: job_record(row) for row in inserted}
    holders: dict[str, JobRecord] = {
        job.idempotency_key: job for job in created.values() if job.idempotency_key is not None
    }
    for row in held:
        holders[row["idempotency_key"]] = job_record(row)
    answered: list[EnqueueResult] = []
    for ordinal, request in enumerate(requests, start=1):
        if ordinal in created:
            answered.append(EnqueueResult(created[ordinal], created=True))
        elif request.idempotency_key in holders:
            answered.append(EnqueueResult(holders[request.idempotency_key], created=False))
        else:
            raise KeyReleased(str(request.idempotency_key))
    return answered
