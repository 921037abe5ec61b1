"""The spec's transition table, compiled into SQL for the SQLite driver.

Set-based statements (promote, rescue) decide each row's target state in SQL:
:func:`target_case` turns the ordered guard choices of ``JOB.options(event,
source)`` into a ``CASE`` expression, with every guard name mapped to a SQL
predicate on the row and every state passed as a parameter.

Partial indexes cannot take parameters, so the row predicates they index on
(and that the queries repeat, so the planner can use them) are built here from
the :class:`JobState` members, once.

Batches of job ids (and of reports) reach SQL as one JSON array read with
``json_each``, and a batch of new jobs is one ``executemany``, so a
statement's text does not depend on the batch's size and SQLite prepares it
once per connection (its statement cache is keyed by the text).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from functools import cache

from taskharbor.spec import FINISHED_JOB_STATES, JOB, JobEvent, JobState

from .rows import JOB_COLUMNS

GUARD_SQL: Mapping[str, str] = {
    "cancel_requested": "cancel_requested <> 0",
    "attempts_exhausted": "attempt >= max_attempts",
    "run_at_in_future": "run_at > :now",
}
"""Each job guard a set-based statement needs, as a predicate on the ``jobs`` row."""


def literal(state: StrEnum) -> str:
    """A job or workflow state as a SQL string literal (for DDL and index predicates only)."""
    return "'" + state.value.replace("'", "''") + "'"


def literal_list(states: Iterable[StrEnum]) -> str:
    """``(s1, s2, ...)`` of literals, sorted so that the text is stable."""
    return "(" + ", ".join(literal(state) for state in sorted(states)) + ")"


def _states(event: JobEvent) -> frozenset[JobState]:
    return frozenset(JobState(source) for source in JOB.sources(event))


AVAILABLE_ROWS = f"state = {literal(JobState.AVAILABLE)}"
"""Rows a worker may lease (the lease index's predicate)."""

DUE_ROWS = f"state IN {literal_list(_states(JobEvent.PROMOTE))}"
"""Rows waiting for their ``run_at`` (the promote index's predicate)."""

LEASED_ROWS = f"state IN {literal_list(_states(JobEvent.LEASE_EXPIRED))}"
"""Rows holding a lease (the rescue index's predicate)."""

ALL_STATES = literal_list(JobState)
"""Every persisted state, for the ``CHECK`` constraint on the state column."""

FINISHED_STATES = literal_list(FINISHED_JOB_STATES)
"""The states in which a job is finished (``finished_at`` is set)."""


def target_case(event: JobEvent) -> tuple[str, dict[str, str]]:
    """A SQL ``CASE`` giving the row's target state for ``event``, and its parameters.

    Choices are tried in the spec's order, so the first whose guards hold wins,
    exactly as ``JOB.resolve`` does.  A row whose state the event does not apply
    to gets ``NULL``.  Parameters are named ``:<event>_<n>`` and hold state
    values; the guard predicates may also use ``:now``.
    """
    whens: list[str] = []
    params: dict[str, str] = {}

    def param(value: str) -> str:
        name = f"{event.value}_{len(params)}"
        params[name] = value
        return f":{name}"

    for source in sorted(JOB.sources(event)):
        for choice in JOB.options(event, source):
            condition = f"state = {param(source)}"
            if choice.guards:
                missing = [guard for guard in choice.guards if guard not in GUARD_SQL]
                if missing:
                    raise RuntimeError(f"no SQL for guard(s) {missing} of event {event.value}")
                condition += " AND (" + " OR ".join(GUARD_SQL[g] for g in choice.guards) + ")"
            whens.append(f"WHEN {condition} THEN {param(choice.target)}")
    return "CASE " + " ".join(whens) + " END", params


LEASE_ORDER = "priority DESC, run_at, id"
"""The order jobs are leased in: the lease indexes' order after the queue (and group)."""

UNLIMITED_ROWS = f"{AVAILABLE_ROWS} AND flow_group IS NULL"
"""Available rows without flow limits (the predicate of their lease index)."""

LIMITED_ROWS = f"{AVAILABLE_ROWS} AND flow_group IS NOT NULL"
"""Available rows with flow limits (the predicate of their groups' index)."""


@cache
def ready_jobs_query(queue_count: int) -> str:
    """The lease walk's candidates from ``queue_count`` queues, in lease order: every
    available job without limits, and the first job of each group of limited ones
    (its row in ``flow_tops``), as (id, priority, run_at, task, flow, queue, group), the
    last three NULL for a job without limits.

    Parameters ``:q0``, ``:q1``, ... name the queues.  SQLite merges the arms, each
    read in order from its index, as the caller reads on (no sort, no ``LIMIT``):
    a walk reads as many candidates as it looks at, however long the backlog is.
    """
    arms = []
    for index in range(queue_count):
        arms.append(
            "SELECT id, priority, run_at, task, NULL, NULL, NULL FROM jobs "
            f"WHERE {UNLIMITED_ROWS} AND queue = :q{index}"
        )
        arms.append(
            "SELECT t.id, t.priority, t.run_at, g.task, g.flow, t.queue, t.flow_group "
            "FROM flow_tops AS t JOIN flow_groups AS g ON g.id = t.flow_group "
            f"WHERE t.queue = :q{index}"
        )
    return " UNION ALL ".join(arms) + f" ORDER BY {LEASE_ORDER}"


JOBS_BY_ID = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
"""The rows of the jobs whose ids the JSON array parameter lists (in no particular order)."""

TOKEN_CHARS = 32
"""Length of a lease token: 16 random bytes in hex."""

LEASE_JOBS = (
    "UPDATE jobs SET state = :target, attempt = attempt + 1, "
    f"lease_token = substr(:tokens, {TOKEN_CHARS} * leased.key + 1, {TOKEN_CHARS}), "
    "lease_expires_at = :expires, leased_by = :worker, progress = NULL "
    "FROM json_each(:ids) AS leased WHERE jobs.id = leased.value "
    f"RETURNING {JOB_COLUMNS}"
)
"""Lease the jobs whose ids the JSON array ``:ids`` lists, returning their rows (in no
particular order).  ``:tokens`` holds one new token per id, concatenated: the ``n``-th
job of the array gets the ``n``-th :data:`TOKEN_CHARS` characters."""


def leaving_running(target: str) -> str:
    """The assignments every event out of ``running`` shares, for a set-based ``UPDATE``.

    ``target`` is the SQL expression of the row's new state.  As
    :meth:`~taskharbor.drivers.sqlite.writes.Writes.apply` does for one row:
    ``finished_at`` is set when the job finishes, a cancelled job keeps the
    reason its workflow's cancel recorded or gets the default one (any other
    target clears it), and the lease fields are cleared.  Parameters:
    ``:now``, ``:cancelled`` (the state) and ``:by_request`` (the reason).
    """
    return (
        f"finished_at = CASE WHEN {target} IN {FINISHED_STATES} THEN :now ELSE finished_at END, "
        f"reason = CASE WHEN {target} = :cancelled THEN COALESCE(reason, :by_request) END, "
        "lease_token = NULL, lease_expires_at = NULL, leased_by = NULL, cancel_requested = 0"
    )


INSERT_COLUMNS = (
    "task, queue, state, args, kwargs, priority, run_at, attempt, max_attempts, created_at, "
    "idempotency_key, workflow_id, depends_on, step_args, step_input, retry, "
    "flow, flow_key, flow_sequence, flow_group, "
    "headers, tags, meta, key_scope"
)
"""The columns an enqueue writes, in the order :data:`INSERT_JOB` binds them."""

INSERT_MARKS = ", ".join("?" for _ in INSERT_COLUMNS.split(","))
"""One ``?`` placeholder per column of :data:`INSERT_COLUMNS`."""

INSERT_JOB = f"INSERT INTO jobs ({INSERT_COLUMNS}) VALUES ({INSERT_MARKS})"
"""Insert one job, binding :data:`INSERT_COLUMNS` (run with ``executemany`` for a batch)."""

GIVE_UP_KEY = "UPDATE jobs SET given_up_key = idempotency_key, idempotency_key = NULL WHERE id = ?"
"""The job (by id) gives its idempotency key up to a newer job, for good."""

JOBS_AFTER = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id > ? ORDER BY id"
"""The rows of the jobs whose id is above the parameter, in id order."""
