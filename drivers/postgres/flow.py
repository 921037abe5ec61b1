"""Flow control in the PostgreSQL store: its schema, and the lease of limited jobs.

Each job keeps its limits as JSON text (``flow``), with its key, its sequence
mode and the names of the limits its guards read (``flow_locks``) as columns
for the indexes and locks.  A lease first runs the plain one-statement lease;
when its candidates include limited jobs (or recent leases met some) it calls
``lease_limited``, a PL/pgSQL function of the schema that walks the candidates
in lease order in one round trip: a job without limits is taken; a limited one
is taken only if it gets every lock of its ``flow_locks`` at once (a
transaction-scoped advisory lock per task, key and rate bucket, tried without
waiting, so two leases never deadlock and never both take the last slot) and,
counting *after* the locks (each statement of the function reads what was
committed before it), none of the guards of :mod:`taskharbor.spec.flow` holds.
Every count is one probe of a partial index, plus the jobs the call has taken
so far (limited or not), which it leases all at once with one ``UPDATE`` at the
end, its row locks and advisory locks held until the statement commits; from
one queue it reads the candidates by an equality on the queue, so the lease
index gives them in order, in one pass however many it passes over.  A guard's
lookup runs only for a limit the candidate carries, a lock the call holds is not
tried again, and a key's sequence head is read once a call.  ``flow_starts``
keeps each rate bucket's starts for a day.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from psycopg import sql

from taskharbor.spec import FINISHED_JOB_STATES, EnqueueRequest, JobState
from taskharbor.spec.flow import FlowLimits, OnDead, flow_text, rate_bucket

from .queues import paused_table
from .rows import job_columns
from .tables import Tables, statement
from .transitions import state_literals

_RUNNING = "state = {running}"
_HOLDS_SEQUENCE = (
    "flow_sequence IS NOT NULL AND (state NOT IN {finished} OR "
    "(state = {dead} AND flow_sequence = {block}))"
)
"""The sequence jobs that hold back the later jobs of their key (spec/flow.py)."""

_SIGNATURE = """
{create} FUNCTION {lease_limited}(
    queues text[], wanted integer, seconds double precision, worker text, at timestamptz
) RETURNS SETOF {jobs} LANGUAGE plpgsql AS $$
DECLARE
    c record;
    f json;"""

_CANDIDATES = """
            SELECT j.id, j.task, j.flow, j.flow_key, j.flow_locks FROM {jobs} j
            WHERE j.state = {available} AND j.queue {in_queues} AND NOT j.id = ANY(seen)
            ORDER BY j.priority DESC, j.run_at, j.id
            LIMIT walk FOR UPDATE SKIP LOCKED"""
"""The next ``walk`` candidates in lease order, locked, skipping rows another call holds."""

_RATE = """
                IF f->'rate' IS NOT NULL AND json_typeof(f->'rate') = 'array' THEN
                    CONTINUE WHEN ({starts_since}) >= (f->'rate'->>0)::integer;
                    INSERT INTO {starts} (bucket, started_at)
                    VALUES (c.flow_locks[array_length(c.flow_locks, 1)], at);
                    DELETE FROM {starts} s
                    WHERE s.bucket = c.flow_locks[array_length(c.flow_locks, 1)]
                      AND s.started_at <= at - interval '1 day';
                END IF;
            END IF;"""
"""The rate guard: a start recorded in the bucket (its lock's name) for each job taken."""

_TRY_LOCKS = """
                -- every lock at once or none taken: another lease is deciding on it
                CONTINUE WHEN NOT (
                    SELECT coalesce(bool_and(pg_try_advisory_xact_lock(
                        hashtextextended({lock_space} || l, 0))), TRUE)
                    FROM unnest(c.flow_locks) AS l);"""
"""Try every advisory lock of the candidate's ``flow_locks``; pass over it unless all held."""

_GUARDS = (
    """
            read := read + 1;
            seen := seen || c.id;
            IF c.flow IS NOT NULL THEN
                f := c.flow::json;"""
    + _TRY_LOCKS
    + """
                CONTINUE WHEN f->>'concurrency' IS NOT NULL
                    AND ({running_of_task}){tasks_taken} >= (f->>'concurrency')::integer;
                CONTINUE WHEN f->>'key_concurrency' IS NOT NULL
                    AND ({running_with_key}){keys_taken} >= (f->>'key_concurrency')::integer;
                CONTINUE WHEN f->>'sequence' IS NOT NULL AND ({sequence_head}) <> c.id;"""
    + _RATE
)
"""The guards of one candidate ``c``: each ``CONTINUE`` passes over a job held back."""

_WALK = """
    walk integer := wanted;
    read integer;
    seen bigint[] := '{{}}';
BEGIN
    LOOP
        read := 0;"""
"""The walk's state: how many candidates to read, how many were read, which were seen."""

_LEASED = """
            SET state = {running_state}, attempt = j.attempt + 1,
                lease_token = replace(gen_random_uuid()::text, '-', ''),
                lease_expires_at = at + make_interval(secs => seconds),
                leased_by = worker{cleared}"""

_CHOSEN = """
            chosen := chosen || c.id;
            tasks := tasks || c.task;
            IF c.flow_key IS NOT NULL THEN
                keys := keys || c.flow_key;
            END IF;
            EXIT WHEN cardinality(chosen) >= wanted;
        END LOOP;
        CLOSE candidates;"""
"""A candidate that passed its guards is taken: counted for its task and key."""

_LEASE_CHOSEN = (
    """
    RETURN QUERY UPDATE {jobs} j"""
    + _LEASED
    + """
    WHERE j.id = ANY(chosen)
    RETURNING j.*;
END
$$
"""
)
"""The jobs taken, leased by one ``UPDATE`` at the end of the call."""

_FUNCTION = (
    _SIGNATURE
    + """
    leased {jobs}%ROWTYPE;
    taken integer := 0;"""
    + _WALK
    + """
        FOR c IN"""
    + _CANDIDATES
    + """
        LOOP"""
    + _GUARDS
    + """
            UPDATE {jobs} j"""
    + _LEASED
    + """
            WHERE j.id = c.id
            RETURNING j.* INTO leased;
            RETURN NEXT leased;
            taken := taken + 1;
            EXIT WHEN taken >= wanted;
        END LOOP;
        EXIT WHEN taken >= wanted OR read < walk;
        walk := walk * 4;
    END LOOP;
END
$$
"""
)
"""``lease_limited`` as migrations 9 and 12 created it: one ``UPDATE`` per job taken."""

_FETCH = (
    """
        ELSE
            OPEN candidates FOR"""
    + _CANDIDATES.replace("{in_queues}", "= ANY(queues)")
    + """;
        END IF;
        LOOP
            FETCH candidates INTO c;
            EXIT WHEN NOT FOUND;"""
)
"""Several queues: the candidates by ``ANY``, sorted; then each candidate in turn."""

_TAKEN_STATE = """
    candidates refcursor;
    chosen bigint[] := '{{}}';
    tasks text[] := '{{}}';
    keys text[] := '{{}}';"""
"""The candidates' cursor, and the jobs taken so far with their tasks and keys."""

_BATCHED_FUNCTION = (
    _SIGNATURE
    + _TAKEN_STATE
    + """"""
    + _WALK
    + """
        -- one queue by equality: the lease index gives the order, read up to the limit
        IF cardinality(queues) = 1 THEN
            OPEN candidates FOR"""
    + _CANDIDATES.replace("{in_queues}", "= queues[1]")
    + """;"""
    + _FETCH
    + _GUARDS
    + _CHOSEN
    + """
        EXIT WHEN cardinality(chosen) >= wanted OR read < walk;
        walk := walk * 4;
    END LOOP;"""
    + _LEASE_CHOSEN
)
"""``lease_limited`` since migration 14: the jobs taken are leased by one ``UPDATE`` at
the end, so each guard counts the running jobs stored plus those this call has taken
(``tasks``, ``keys``); a lease from one queue walks the lease index in order instead
of sorting the queue's every available job."""

_CACHED_GUARDS = (
    """
            read := read + 1;
            seen := seen || c.id;
            IF c.flow IS NOT NULL THEN
                f := c.flow::json;
                IF NOT c.flow_locks <@ locked THEN  -- a lock this call holds is not tried again"""
    + _TRY_LOCKS.replace("\n", "\n    ")
    + """
                    locked := locked || c.flow_locks;
                END IF;
                IF f->>'concurrency' IS NOT NULL THEN
                    CONTINUE WHEN ({running_of_task}){tasks_taken}
                        >= (f->>'concurrency')::integer;
                END IF;
                IF f->>'key_concurrency' IS NOT NULL THEN
                    CONTINUE WHEN ({running_with_key}){keys_taken}
                        >= (f->>'key_concurrency')::integer;
                END IF;
                IF f->>'sequence' IS NOT NULL THEN
                    -- the key's head as the call first read it: once taken, it is still the head
                    at_key := array_position(head_keys, c.flow_key);
                    IF at_key IS NULL THEN
                        head_keys := head_keys || c.flow_key;
                        heads := heads || ({sequence_head});
                        at_key := cardinality(heads);
                    END IF;
                    CONTINUE WHEN heads[at_key] <> c.id;
                END IF;"""
    + _RATE
)
"""The guards of migration 16: each lookup runs only for a limit the candidate carries,
a lock already held is not tried again, and a key's sequence head is read once a call."""

_CACHED_FUNCTION = (
    _SIGNATURE
    + _TAKEN_STATE
    + """
    locked text[] := '{{}}';
    head_keys text[] := '{{}}';
    heads bigint[] := '{{}}';
    at_key integer;"""
    + _WALK
    + """
        -- one queue by equality: the lease index gives the candidates in order, read
        -- one by one as far as it takes (no rounds); several queues: rounds, sorted
        IF cardinality(queues) = 1 THEN
            OPEN candidates FOR"""
    + _CANDIDATES.replace("{in_queues}", "= queues[1]").replace("LIMIT walk ", "")
    + """;
            walk := NULL;"""
    + _FETCH
    + _CACHED_GUARDS
    + _CHOSEN
    + """
        EXIT WHEN cardinality(chosen) >= wanted OR walk IS NULL OR read < walk;
        walk := walk * 4;
    END LOOP;"""
    + _LEASE_CHOSEN
)
"""``lease_limited`` since migration 16: :data:`_BATCHED_FUNCTION` with
:data:`_CACHED_GUARDS`, and a lease from one queue reads its candidates in one pass
of the lease index, however many it passes over (no rounds re-reading the ones seen)."""


_TAKEN = {
    "tasks_taken": sql.SQL(" + cardinality(array_positions(tasks, c.task))"),
    "keys_taken": sql.SQL(" + cardinality(array_positions(keys, c.flow_key))"),
}
"""The batched function's in-call counts, added to the guards' lookups."""


RUNNING_OF_TASK = "SELECT count(*) FROM {jobs} r WHERE r.{running} AND r.task = {task}"
RUNNING_WITH_KEY = "SELECT count(*) FROM {jobs} r WHERE r.{running} AND r.flow_key = {key}"
SEQUENCE_HEAD = "SELECT min(h.id) FROM {jobs} h WHERE h.flow_key = {key} AND {holds}"
STARTS_SINCE = (
    "SELECT count(*) FROM {starts} s WHERE s.bucket = {bucket} AND s.started_at > {since}"
)
"""The guards' lookups, each one probe of the partial index made for it; the function
fills in its candidate's values (a test, literals)."""

_CANDIDATE = {
    "task": sql.SQL("c.task"),
    "key": sql.SQL("c.flow_key"),
    "bucket": sql.SQL("c.flow_locks[array_length(c.flow_locks, 1)]"),
    "since": sql.SQL("at - make_interval(secs => (f->'rate'->>1)::float8)"),
}


def lookups(schema: str, values: Mapping[str, sql.Composable]) -> dict[str, sql.Composed]:
    """The four lookups of :func:`flow_control`'s function with ``values`` filled in."""
    names = _tables(schema)
    return {
        name: sql.SQL(text).format(**names, **values)
        for name, text in (
            ("running_of_task", RUNNING_OF_TASK),
            ("running_with_key", RUNNING_WITH_KEY),
            ("sequence_head", SEQUENCE_HEAD),
            ("starts_since", STARTS_SINCE),
        )
    }


def _tables(schema: str) -> dict[str, sql.Composable]:
    return {
        "jobs": sql.Identifier(schema, "jobs"),
        "starts": sql.Identifier(schema, "flow_starts"),
        "lease_limited": sql.Identifier(schema, "lease_limited"),
        "lock_space": sql.Literal(f"taskharbor {schema} "),
        "running": sql.SQL(_RUNNING).format(running=sql.Literal(JobState.RUNNING.value)),
        "running_state": sql.Literal(JobState.RUNNING.value),
        "available": sql.Literal(JobState.AVAILABLE.value),
        "holds": sql.SQL(_HOLDS_SEQUENCE).format(
            finished=state_literals(FINISHED_JOB_STATES),
            dead=sql.Literal(JobState.DEAD.value),
            block=sql.Literal(OnDead.BLOCK.value),
        ),
    }


def lease_limited_function(
    schema: str, *, clears_progress: bool, batched: bool = False, cached: bool = False
) -> sql.Composed:
    """The ``lease_limited`` function: as migration 9 created it, as the job metadata
    migration replaced it (a lease clears the job's progress), ``batched`` as migration
    14 replaced it (:data:`_BATCHED_FUNCTION`), or ``cached`` as migration 16 did
    (:data:`_CACHED_FUNCTION`)."""
    names = {**_tables(schema), **lookups(schema, _CANDIDATE)}
    if batched or cached:
        text = _CACHED_FUNCTION if cached else _BATCHED_FUNCTION
        return sql.SQL(text).format(**names, **_TAKEN, create=_CREATE[True], cleared=_CLEARED[True])
    return sql.SQL(_FUNCTION).format(
        **names,
        create=_CREATE[clears_progress],
        cleared=_CLEARED[clears_progress],
        in_queues=sql.SQL("= ANY(queues)"),
        tasks_taken=sql.SQL(""),
        keys_taken=sql.SQL(""),
    )


_CREATE = {False: sql.SQL("CREATE"), True: sql.SQL("CREATE OR REPLACE")}
_CLEARED = {False: sql.SQL(""), True: sql.SQL(", progress = NULL, progress_message = NULL")}
"""What :func:`lease_limited_function` creates the function with, and what its lease
clears besides (by ``clears_progress``)."""


def batched_lease(schema: str) -> list[sql.Composed]:
    """Migration: ``lease_limited`` leases the jobs it takes with one ``UPDATE``, and
    walks one queue's lease index in order."""
    return [lease_limited_function(schema, clears_progress=True, batched=True)]


def cached_guards(schema: str) -> list[sql.Composed]:
    """Migration: ``lease_limited`` runs only the lookups of the limits a candidate
    carries, reads a key's sequence head once a call, and walks one queue in one pass."""
    return [lease_limited_function(schema, clears_progress=True, cached=True)]


def flow_control(schema: str) -> list[sql.Composed]:
    """Migration: the flow columns, the guards' partial indexes, the starts table and
    the ``lease_limited`` function."""
    names = {**_tables(schema), **lookups(schema, _CANDIDATE)}
    texts = [
        "ALTER TABLE {jobs} ADD COLUMN flow text, ADD COLUMN flow_key text,"
        " ADD COLUMN flow_sequence text, ADD COLUMN flow_locks text[]",
        "COMMENT ON COLUMN {jobs}.flow_locks IS 'the advisory locks a lease of the job takes:"
        " its limited task, its key, its rate bucket (last)'",
        "CREATE INDEX ON {jobs} (task) WHERE {running}",
        "CREATE INDEX ON {jobs} (flow_key) WHERE {running} AND flow_key IS NOT NULL",
        "CREATE INDEX ON {jobs} (flow_key, id) WHERE {holds}",
        "CREATE TABLE {starts} (bucket text NOT NULL, started_at timestamptz NOT NULL)",
        "CREATE INDEX ON {starts} (bucket, started_at)",
    ]
    return [
        *(sql.SQL(text).format(**names) for text in texts),
        lease_limited_function(schema, clears_progress=False),
    ]


def flow_columns(limits: FlowLimits | None, task: str) -> tuple[str | None, ...]:
    """A new job's ``flow``, ``flow_key``, ``flow_sequence`` (text) and ``flow_locks``
    (a text-array literal) column values."""
    if limits is None:
        return None, None, None, None
    locks = []
    if limits.concurrency is not None:
        locks.append(f"task:{task}")
    if limits.key_concurrency is not None or limits.sequence is not None:
        locks.append(f"key:{limits.key}")
    bucket = rate_bucket(task, limits)
    if bucket is not None:
        locks.append(f"rate:{bucket}")  # last: the function reads the bucket from it
    sequence = None if limits.sequence is None else limits.sequence.value
    return flow_text(limits), limits.key, sequence, _text_array(locks)


FLOW_PARAMS = ("flow", "flow_key", "flow_sequence", "flow_locks")
"""The statement parameters of a job's flow columns, in :func:`flow_columns` order."""


def flow_params(requests: Sequence[EnqueueRequest]) -> dict[str, list[str | None]]:
    """Each flow column of ``requests`` as one list, by parameter name."""
    rows = [flow_columns(request.flow, request.task) for request in requests]
    return {name: [row[index] for row in rows] for index, name in enumerate(FLOW_PARAMS)}


def _text_array(items: list[str]) -> str:
    quoted = ('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items)
    return "{" + ",".join(quoted) + "}"


@statement
def lease_limited(tables: Tables) -> sql.Composed:
    """Lease through ``lease_limited`` (every candidate, limited or not, in order), from
    the queues of ``%(queues)s`` that are not paused."""
    return tables.sql(
        "SELECT {columns} FROM {function}(ARRAY(SELECT q FROM unnest(%(queues)s::text[]) AS q"
        " WHERE NOT EXISTS (SELECT 1 FROM {paused} p WHERE p.name = q)), %(limit)s::integer,"
        " %(seconds)s::float8, %(worker)s::text, {now}) j",
        columns=job_columns(),
        function=sql.Identifier(tables.schema, "lease_limited"),
        paused=paused_table(tables.schema),
    )
