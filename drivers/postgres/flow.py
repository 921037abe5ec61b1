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

**The group walk** (migration 17, docs issue 17).  A limited job's *group* is its
queue, task and ``flow`` text; within one call the guards' counts only grow, so a
member held by a count (task, key, rate) or by a lock another lease holds means
every later member is held too, and a member held by its key's sequence alone
leaves only the key's head, at the head's own position.  ``lease_limited`` is
therefore a merge, in lease order, of the jobs without limits (their own partial
index) and a *frontier* of one candidate per group met (the group's own partial
index gives its members in order): a held group leaves the frontier, a taken job
is replaced by its group's next member.  A group is met through the heads table
``flow_heads``, read in lease order; so a lease costs O(taken + groups ahead),
never O(held-back jobs ahead).  The plain lease takes jobs without limits only
ahead of the earliest hint of its queues.

``flow_heads`` holds *hints*: rows (group, position), a lower bound, never exact.
The invariant: every available limited job has a hint of its group at or ahead
of its position.  Why no job is ever lost, under any number of writers and leases:

* Writers only *insert*: a trigger, in the transaction that makes a limited job
  available (enqueue, promote, release, requeue, rescue), inserts a hint at its
  position.  No writer updates or deletes a hint, so writers never wait on each
  other or on a lease for it (no lock order, no deadlock); a job without limits
  fires nothing (the trigger's ``WHEN`` is false).
* Only leases delete hints, at the end of the call, for the groups they met, in
  two statements: first they read the ids of the groups' hints (snapshot S1);
  then, in one later statement (snapshot S2), they find each group's first
  available member not taken by this call, delete only hints read at S1 that are
  not at that position (skipping rows another lease holds) and, when they deleted
  any, insert a fresh hint at that position, in the same transaction.
* Take a job x available from its last move to available (whose hint h0 was
  committed with it) until now.  A hint h covering x (at or ahead of x) is deleted
  only by a lease that read h at S1, so after h was committed, so after x became
  available; its S2 is later still, sees x available (x never left), so the first
  member it finds is at or ahead of x, and the fresh hint it commits together with
  the deletion covers x.  By induction on deletions x is always covered.  A job
  made available after some lease's S1 has a hint that lease never read, so never
  deletes.  Leases taking jobs do not matter: a job taken leaves ``available`` in
  the same commit that may stop covering it.
* The walk itself decides on rows as the old walk did (the guards after the
  advisory locks, ``FOR UPDATE SKIP LOCKED``, one ``UPDATE`` at the end); a hint
  only says where to look, and a stale hint costs one probe.  Hints left behind
  (rows another lease held, duplicates at one position) cost a skip, never a job.

The price of writers that never wait: one hint per job made available, so the first
lease to meet a group after a flood deletes the flood's hints, once (measured at
100,000 held back: about 1 s for that lease, the next ones as with nothing held),
an O(1) cost per job enqueued rather than per lease.

``tests/test_postgres_group_walk.py`` runs that race with real connections.
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
        "heads_table": heads_table(schema),
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


_HINT_GROUP = "j.queue = hh.queue AND j.task = hh.task AND j.flow = hh.flow"
_CANDIDATE_GROUP = "j.queue = c_queue AND j.task = c_task AND j.flow = c_flow"
_MET_GROUP = "j.queue = m.queue AND j.task = m.task AND j.flow = m.flow"
"""A job ``j`` of one group (the jobs of a queue and task with the same ``flow`` text): of
the hint ``hh``, of the candidate, of a group met."""

_LEASE_ORDER = "j.priority DESC, j.run_at, j.id"

_WALK_FUNCTION = (
    """
CREATE OR REPLACE FUNCTION {lease_limited}(
    queues text[], wanted integer, seconds double precision, worker text, at timestamptz
) RETURNS SETOF {jobs} LANGUAGE plpgsql
-- each probe (ORDER BY ... LIMIT 1) reads its index in order whatever the statistics
-- say: a sort would read every available job of the queue (a table just filled has
-- none to tell the planner so)
SET enable_sort = off AS $$
DECLARE
    f json;
    u record;
    hint record;
    unlimited refcursor;
    has_u boolean;
    has_h boolean := FALSE;
    chosen bigint[] := '{{}}';
    tasks text[] := '{{}}';
    keys text[] := '{{}}';
    locked text[] := '{{}}';
    head_keys text[] := '{{}}';
    heads bigint[] := '{{}}';
    at_key integer;
    -- the groups met this call: names (queue and task length-prefixed, so unambiguous),
    -- and parts
    met text[] := '{{}}';
    met_queue text[] := '{{}}';
    met_task text[] := '{{}}';
    met_flow text[] := '{{}}';
    met_key text[] := '{{}}';
    met_locks text[] := '{{}}';
    -- the frontier: one candidate still to decide per group (its index in met)
    g_met integer[] := '{{}}';
    g_id bigint[] := '{{}}';
    g_rank integer[] := '{{}}';
    g_run timestamptz[] := '{{}}';
    best integer;
    i integer;
    -- the candidate being decided
    c_id bigint;
    c_rank integer;
    c_run timestamptz;
    c_queue text;
    c_task text;
    c_flow text;
    c_key text;
    c_locks text[];
    task_count bigint;
    key_count bigint;
    held boolean;
    waits boolean;
    n_id bigint;
    n_rank integer;
    n_run timestamptz;
    -- the walk of the heads: the last hint read
    h_rank integer := -100000;
    h_run timestamptz := '-infinity';
    h_id bigint := 0;
    hint_ids bigint[];
BEGIN
    IF cardinality(queues) = 1 THEN
        OPEN unlimited FOR
            SELECT j.id, j.task, -j.priority::integer AS rank, j.run_at FROM {jobs} j
            WHERE j.state = {available} AND j.flow IS NULL AND j.queue = queues[1]
            ORDER BY {order_j} FOR UPDATE SKIP LOCKED;
    ELSE
        OPEN unlimited FOR
            SELECT j.id, j.task, -j.priority::integer AS rank, j.run_at FROM {jobs} j
            WHERE j.state = {available} AND j.flow IS NULL AND j.queue = ANY(queues)
            ORDER BY {order_j} FOR UPDATE SKIP LOCKED;
    END IF;
    FETCH unlimited INTO u;
    has_u := FOUND;
    LOOP
        EXIT WHEN cardinality(chosen) >= wanted;
        IF NOT has_h THEN
            -- the next hint of a group not met yet, with the group's first member this
            -- call can lock (at or after the hint: a hint is a lower bound)
            IF cardinality(queues) = 1 THEN
                SELECT {hint_columns} INTO hint FROM {heads_table} hh {first_member}
                WHERE hh.queue = queues[1] {hint_after}
                ORDER BY hh.rank, hh.run_at, hh.id LIMIT 1;
            ELSE
                SELECT {hint_columns} INTO hint FROM {heads_table} hh {first_member}
                WHERE hh.queue = ANY(queues) {hint_after}
                ORDER BY hh.rank, hh.run_at, hh.id LIMIT 1;
            END IF;
            has_h := FOUND;
        END IF;
        -- the earliest of: the next job without limits, the next hint, the frontier
        best := NULL;
        FOR i IN 1 .. cardinality(g_id) LOOP
            IF best IS NULL
               OR (g_rank[i], g_run[i], g_id[i]) < (g_rank[best], g_run[best], g_id[best])
            THEN
                best := i;
            END IF;
        END LOOP;
        IF has_h AND (NOT has_u OR (hint.rank, hint.run_at, hint.id) < (u.rank, u.run_at, u.id))
           AND (best IS NULL
                OR (hint.rank, hint.run_at, hint.id) < (g_rank[best], g_run[best], g_id[best]))
        THEN
            -- a group met: its first member joins the frontier
            has_h := FALSE;
            h_rank := hint.rank;
            h_run := hint.run_at;
            h_id := hint.id;
            met := met || (length(hint.queue) || ':' || hint.queue
                           || length(hint.task) || ':' || hint.task || hint.flow);
            met_queue := met_queue || hint.queue;
            met_task := met_task || hint.task;
            met_flow := met_flow || hint.flow;
            met_key := met_key || hint.flow_key;
            met_locks := met_locks || hint.flow_locks::text;
            IF hint.job IS NOT NULL THEN
                g_met := g_met || cardinality(met);
                g_id := g_id || hint.job;
                g_rank := g_rank || hint.job_rank;
                g_run := g_run || hint.job_run_at;
            END IF;
            CONTINUE;
        END IF;
        IF has_u AND (best IS NULL
                      OR (u.rank, u.run_at, u.id) < (g_rank[best], g_run[best], g_id[best]))
        THEN
            chosen := chosen || u.id;  -- a job without limits is taken
            tasks := tasks || u.task;
            FETCH unlimited INTO u;
            has_u := FOUND;
            CONTINUE;
        END IF;
        EXIT WHEN best IS NULL;
        -- the frontier's earliest candidate: decided by the guards
        c_id := g_id[best];
        c_rank := g_rank[best];
        c_run := g_run[best];
        c_queue := met_queue[g_met[best]];
        c_task := met_task[g_met[best]];
        c_flow := met_flow[g_met[best]];
        c_key := met_key[g_met[best]];
        c_locks := met_locks[g_met[best]]::text[];
        f := c_flow::json;
        held := FALSE;
        waits := FALSE;
        task_count := NULL;
        key_count := NULL;
        IF NOT c_locks <@ locked THEN  -- a lock this call holds is not tried again
            IF (SELECT coalesce(bool_and(pg_try_advisory_xact_lock(
                    hashtextextended({lock_space} || l, 0))), TRUE)
                FROM unnest(c_locks) AS l) THEN
                locked := locked || c_locks;
            ELSE
                held := TRUE;  -- another lease is deciding on it
            END IF;
        END IF;
        IF NOT held AND f->>'concurrency' IS NOT NULL THEN
            task_count := ({running_of_task});
            held := task_count{tasks_taken} >= (f->>'concurrency')::integer;
        END IF;
        IF NOT held AND f->>'key_concurrency' IS NOT NULL THEN
            key_count := ({running_with_key});
            held := key_count{keys_taken} >= (f->>'key_concurrency')::integer;
        END IF;
        IF NOT held AND f->'rate' IS NOT NULL AND json_typeof(f->'rate') = 'array' THEN
            held := ({starts_since}) >= (f->'rate'->>0)::integer;
        END IF;
        IF NOT held AND f->>'sequence' IS NOT NULL THEN
            -- the key's head as the call first read it: once taken, it is still the head
            at_key := array_position(head_keys, c_key);
            IF at_key IS NULL THEN
                head_keys := head_keys || c_key;
                heads := heads || ({sequence_head});
                at_key := cardinality(heads);
            END IF;
            waits := heads[at_key] <> c_id;
        END IF;
        n_id := NULL;
        IF held THEN
            NULL;  -- held by a count or a lock: every later member is too, this call
        ELSIF waits THEN
            -- held by the sequence alone: only the key's head, if it is a later member
            SELECT j.id, -j.priority::integer, j.run_at INTO n_id, n_rank, n_run FROM {jobs} j
            WHERE j.id = heads[at_key] AND j.state = {available} AND {group_c}
              AND NOT j.id = ANY(chosen) AND (-j.priority, j.run_at, j.id) > (c_rank, c_run, c_id)
            FOR UPDATE SKIP LOCKED;
        ELSE
            IF f->'rate' IS NOT NULL AND json_typeof(f->'rate') = 'array' THEN
                INSERT INTO {starts} (bucket, started_at)
                VALUES (c_locks[array_length(c_locks, 1)], at);
                DELETE FROM {starts} s
                WHERE s.bucket = c_locks[array_length(c_locks, 1)]
                  AND s.started_at <= at - interval '1 day';
            END IF;
            chosen := chosen || c_id;
            tasks := tasks || c_task;
            IF c_key IS NOT NULL THEN
                keys := keys || c_key;
            END IF;
            -- taken: the group goes on with its next member, unless a count it read
            -- (plus what this call took) already holds every later one
            IF NOT coalesce(task_count{tasks_taken} >= (f->>'concurrency')::integer, FALSE)
               AND NOT coalesce(key_count{keys_taken} >= (f->>'key_concurrency')::integer, FALSE)
            THEN
                SELECT j.id, -j.priority::integer, j.run_at INTO n_id, n_rank, n_run FROM {jobs} j
                WHERE j.state = {available} AND {group_c} AND NOT j.id = ANY(chosen)
                  AND (-j.priority, j.run_at, j.id) > (c_rank, c_run, c_id)
                ORDER BY {order_j} LIMIT 1 FOR UPDATE SKIP LOCKED;
            END IF;
        END IF;
        IF n_id IS NULL THEN
            g_met := g_met[:best - 1] || g_met[best + 1:];
            g_id := g_id[:best - 1] || g_id[best + 1:];
            g_rank := g_rank[:best - 1] || g_rank[best + 1:];
            g_run := g_run[:best - 1] || g_run[best + 1:];
        ELSE
            g_id[best] := n_id;
            g_rank[best] := n_rank;
            g_run[best] := n_run;
        END IF;
    END LOOP;
    CLOSE unlimited;
    IF cardinality(met) > 0 THEN
        -- upkeep of the groups met: the hints read first, then (a later snapshot) each
        -- group's first member left available; see the module's docstring for why
        hint_ids := ARRAY(
            SELECT hh.hid FROM {heads_table} hh
            JOIN unnest(met_queue, met_task, met_flow) AS m(queue, task, flow)
              ON hh.queue = m.queue AND hh.task = m.task AND hh.flow = m.flow);
        WITH firsts AS (
            SELECT m.queue, m.task, m.flow, j.rank, j.run_at, j.id
            FROM unnest(met_queue, met_task, met_flow) AS m(queue, task, flow)
            LEFT JOIN LATERAL (
                SELECT -j.priority::integer AS rank, j.run_at, j.id FROM {jobs} j
                WHERE j.state = {available} AND {group_m} AND NOT j.id = ANY(chosen)
                ORDER BY {order_j} LIMIT 1
            ) j ON TRUE
        ), held AS (  -- rows another lease is deleting are left to it: never a wait
            SELECT x.hid FROM {heads_table} x WHERE x.hid = ANY(hint_ids) FOR UPDATE SKIP LOCKED
        ), gone AS (
            DELETE FROM {heads_table} hh USING held, firsts fs
            WHERE hh.hid = held.hid
              AND hh.queue = fs.queue AND hh.task = fs.task AND hh.flow = fs.flow
              AND (fs.id IS NULL OR (hh.rank, hh.run_at, hh.id) <> (fs.rank, fs.run_at, fs.id))
            RETURNING hh.queue, hh.task, hh.flow
        )
        INSERT INTO {heads_table} (queue, task, flow, rank, run_at, id)
        SELECT fs.queue, fs.task, fs.flow, fs.rank, fs.run_at, fs.id FROM firsts fs
        WHERE fs.id IS NOT NULL AND EXISTS (
            SELECT 1 FROM gone g
            WHERE g.queue = fs.queue AND g.task = fs.task AND g.flow = fs.flow);
    END IF;"""
    + _LEASE_CHOSEN
)
"""``lease_limited`` since the group walk's migration: a merge, in lease order, of the
jobs without limits and one candidate per group (see the module's docstring)."""


_WALKED = {
    "task": sql.SQL("c_task"),
    "key": sql.SQL("c_key"),
    "bucket": sql.SQL("c_locks[array_length(c_locks, 1)]"),
    "since": sql.SQL("at - make_interval(secs => (f->'rate'->>1)::float8)"),
}
"""The candidate's values in the group walk (scalars: its group's parts are kept once)."""

_HINT_COLUMNS = (
    "hh.queue, hh.task, hh.flow, hh.rank, hh.run_at, hh.id, j.id AS job,"
    " j.rank AS job_rank, j.run_at AS job_run_at, j.flow_key, j.flow_locks"
)
_FIRST_MEMBER = """LEFT JOIN LATERAL (
                    SELECT j.id, -j.priority::integer AS rank, j.run_at, j.flow_key, j.flow_locks
                    FROM {jobs} j WHERE j.state = {available} AND {group}
                    ORDER BY {order_j} LIMIT 1 FOR UPDATE SKIP LOCKED) j ON TRUE"""
_HINT_AFTER = """AND (hh.rank, hh.run_at, hh.id) > (h_rank, h_run, h_id)
                  AND NOT length(hh.queue) || ':' || hh.queue
                          || length(hh.task) || ':' || hh.task || hh.flow = ANY(met)"""


def walk_function(schema: str) -> sql.Composed:
    """``lease_limited`` walking groups: :data:`_WALK_FUNCTION` filled in."""
    names = _tables(schema)
    order = sql.SQL(_LEASE_ORDER)
    return sql.SQL(_WALK_FUNCTION).format(
        **names,
        **lookups(schema, _WALKED),
        tasks_taken=sql.SQL(" + cardinality(array_positions(tasks, c_task))"),
        keys_taken=sql.SQL(" + cardinality(array_positions(keys, c_key))"),
        cleared=_CLEARED[True],
        order_j=order,
        hint_columns=sql.SQL(_HINT_COLUMNS),
        first_member=sql.SQL(_FIRST_MEMBER).format(
            **names, order_j=order, group=sql.SQL(_HINT_GROUP)
        ),
        hint_after=sql.SQL(_HINT_AFTER),
        group_c=sql.SQL(_CANDIDATE_GROUP),
        group_m=sql.SQL(_MET_GROUP),
    )


_HINT = """
CREATE FUNCTION {hint_function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {heads_table} (queue, task, flow, rank, run_at, id)
    VALUES (NEW.queue, NEW.task, NEW.flow, -NEW.priority::integer, NEW.run_at, NEW.id);
    RETURN NULL;
END
$$
"""
"""A hint at the job's position, written in the transaction that makes it available."""

_GROUP_WALK_DDL = (
    """
    CREATE TABLE {heads_table} (
        hid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        queue text NOT NULL,
        task text NOT NULL,
        flow text NOT NULL,
        rank integer NOT NULL,
        run_at timestamptz NOT NULL,
        id bigint NOT NULL
    )""",
    "COMMENT ON TABLE {heads_table} IS 'hints of the first available job of each group of"
    " limited jobs (queue, task, flow): a lower bound of its lease position (rank is"
    " minus the priority), never removed by a writer'",
    "CREATE INDEX ON {heads_table} (queue, rank, run_at, id)",
    "CREATE INDEX ON {heads_table} (queue, task, flow)",
    _HINT,
    "CREATE TRIGGER flow_hint_on_insert AFTER INSERT ON {jobs} FOR EACH ROW"
    " WHEN (NEW.state = {available} AND NEW.flow IS NOT NULL)"
    " EXECUTE FUNCTION {hint_function}()",
    "CREATE TRIGGER flow_hint_on_update AFTER UPDATE ON {jobs} FOR EACH ROW"
    " WHEN (NEW.state = {available} AND NEW.flow IS NOT NULL AND (OLD.state <> NEW.state"
    " OR OLD.priority <> NEW.priority OR OLD.run_at <> NEW.run_at OR OLD.queue <> NEW.queue))"
    " EXECUTE FUNCTION {hint_function}()",
    "DROP INDEX {lease_index}",
    "CREATE INDEX {unlimited_index} ON {jobs} (queue, priority DESC, run_at, id)"
    " WHERE state = {available} AND flow IS NULL",
    "CREATE INDEX {group_index} ON {jobs} (queue, task, flow, priority DESC, run_at, id)"
    " WHERE state = {available} AND flow IS NOT NULL",
    "INSERT INTO {heads_table} (queue, task, flow, rank, run_at, id)"
    " SELECT DISTINCT ON (queue, task, flow) queue, task, flow, -priority::integer, run_at, id"
    " FROM {jobs} WHERE state = {available} AND flow IS NOT NULL"
    " ORDER BY queue, task, flow, priority DESC, run_at, id",
)
"""The heads table, the trigger that hints every limited job made available, the lease
index split into jobs without limits and groups, and a hint for each group stored."""


def heads_table(schema: str) -> sql.Identifier:
    """The hints of the groups' first available jobs (see the module's docstring)."""
    return sql.Identifier(schema, "flow_heads")


def group_walk(schema: str) -> list[sql.Composed]:
    """Migration: the heads table and its trigger, the split lease index, and
    ``lease_limited`` walking groups instead of held-back jobs."""
    names = {
        **_tables(schema),
        "hint_function": sql.Identifier(schema, "flow_hint"),
        "lease_index": sql.Identifier(schema, "jobs_queue_priority_run_at_id_idx"),
        "unlimited_index": sql.Identifier("jobs_unlimited_lease"),
        "group_index": sql.Identifier("jobs_group_lease"),
    }
    return [
        *(sql.SQL(text).format(**names) for text in _GROUP_WALK_DDL),
        walk_function(schema),
    ]
