"""The PostgreSQL driver: the production store for many workers on many machines.

``PostgresDriver(conninfo, schema="taskharbor")`` keeps jobs and workflows in
tables of ``schema`` (created and upgraded by :meth:`PostgresDriver.migrate`,
i.e. ``taskharbor migrate``; a driver on an out-of-date schema refuses to work
and says so).  Opening the driver connects once: an unreachable server is a
``StoreError`` within seconds, naming its host and port (a ``connect_timeout``
of 5 s is added when the connection string and ``PGCONNECT_TIMEOUT`` give
none; see :mod:`.postgres_connect`).  Every SPI call is one transaction on a pooled connection;
concurrent calls from any number of processes are safe:

* leasing takes rows with ``FOR UPDATE SKIP LOCKED``, in the spec's order;
* fenced reports check the lease token in SQL, in one statement per batch;
* promote and rescue are set-based and skip rows another worker holds;
* idempotency keys are a unique partial index;
* a chord's callback is released by exactly one transaction (see
  :mod:`.postgres_workflows`).

Time: with ``clock=None`` every statement reads the database's clock (the
transaction time), so clock skew between worker machines cannot break
leases; a given clock (a ``FakeClock`` in tests) is read once per call and
passed as a parameter.

Transactional enqueue: :meth:`PostgresDriver.enqueue_in` (and
:meth:`PostgresDriver.enqueue_in_async`) run the insert on the caller's own
psycopg connection, inside the caller's transaction, so the jobs exist if and
only if that transaction commits.  From SQLAlchemy, pass the raw psycopg
connection of the session's connection (``session.connection().connection.driver_connection``);
from Django, ``django.db.connection.connection`` inside ``transaction.atomic()``.

``notifications=False`` suits a pooler in transaction mode (PgBouncer), where
LISTEN cannot work: idle workers then poll every ``poll_interval`` seconds.
``prepared_statements=False`` suits a transaction-mode pooler that cannot keep
prepared statements (PgBouncer before 1.21, or with ``max_prepared_statements
= 0``): the enqueue statements, the only ones the driver prepares, are then
parsed and planned at each call.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Json
from psycopg_pool import ConnectionPool

from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    FINISHED_JOB_STATES,
    JOB,
    WORKFLOW,
    WORKFLOW_CANCELLED,
    Capabilities,
    Clock,
    Completion,
    Driver,
    EnqueueRequest,
    EnqueueResult,
    Failure,
    HeartbeatResult,
    InvalidRequest,
    InvalidTransition,
    JobEvent,
    JobFilter,
    JobId,
    JobNotFound,
    JobRecord,
    JobState,
    LeaseLost,
    LeaseRef,
    PromoteResult,
    SnoozeRequest,
    WorkflowFilter,
    WorkflowGraph,
    WorkflowId,
    WorkflowNotFound,
    WorkflowRecord,
    dependency_reason,
)
from taskharbor.spec.history import FinishedCount, check_history_queue, check_history_since
from taskharbor.spec.records import (
    LEASE_EXPIRED_MESSAGE,
    LEASE_EXPIRED_TYPE,
    PRUNED_BY_DEFAULT,
    check_aware,
    check_batch,
    check_lease_args,
    check_lease_seconds,
    check_prune_states,
    job_ids,
    wait_timeout,
)
from taskharbor.spec.retry import retry_delay

from ..corrupt_rows import rescue_policy, split_leased
from ..finished_watches import finished_notice
from . import enqueue as enqueueing
from . import flow, statements, workflows
from .connect import check_reachable, with_connect_timeout
from .graphs import ALLOCATE_IDS, callback_values, id_count, workflow_values
from .notify import Listener, sleep_until
from .queues import PostgresQueues
from .rows import job_record, workflow_record
from .schedules import PostgresSchedules
from .schema import check_schema, migrate
from .tables import Tables
from .workers import PostgresWorkers

T = TypeVar("T")
Row = dict[str, Any]
Params = dict[str, Any]

BIGINT_MAX = 2**63 - 1
RETRIES = 5
"""Attempts at a call that had to start over: PostgreSQL broke a deadlock with it, or an
idempotency key's holder was pruned mid-call.  Either way the attempt changed nothing."""

NEVER_AUTOMATICALLY = sys.maxsize
"""psycopg's ``prepare_threshold`` for statements prepared only when asked (``prepare=True``)."""

_NOTIFY_QUEUES = "SELECT pg_notify(%(channel)s, queue) FROM unnest(%(queues)s::text[]) AS queue"
"""Wake the listeners of each queue of ``%(queues)s`` (sent when the transaction commits)."""

_NOTIFY_FINISHED = "SELECT pg_notify(%(channel)s, %(notice)s)"
"""Wake the waiters on the jobs a call finished (sent when the transaction commits)."""

PRUNE_BATCH = 1000
"""Rows deleted per prune transaction: short transactions, short locks."""


class DatabaseClock:
    """The database server's clock: one clock for every worker, whatever their machines say."""

    def __init__(self, pool: ConnectionPool[PooledConnection]) -> None:
        self._pool = pool

    def now(self) -> datetime:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        moment: datetime = row[0]
        return moment.astimezone(UTC)


class PooledConnection(psycopg.Connection[tuple[Any, ...]]):
    """A connection of the driver's pool, with the one cursor every call on it reuses.

    A new cursor looks up its parameters' dumpers and its columns' loaders
    again: for a one-row statement that costs about half of what psycopg
    spends sending it and reading the answer.  A pooled connection serves one
    call at a time, so one cursor suffices.
    """

    _calls_cursor: psycopg.Cursor[Row] | None = None

    def calls_cursor(self) -> psycopg.Cursor[Row]:
        """The cursor (rows as dicts) shared by the driver's calls on this connection."""
        if self._calls_cursor is None or self._calls_cursor.closed:
            self._calls_cursor = self.cursor(row_factory=dict_row)
        return self._calls_cursor


class PostgresDriver(PostgresSchedules, PostgresQueues, PostgresWorkers, Driver):
    """Jobs and workflows in PostgreSQL tables (see the module documentation)."""

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "taskharbor",
        clock: Clock | None = None,
        notifications: bool = True,
        pool_size: int = 4,
        poll_interval: float = 1.0,
        prepared_statements: bool = True,
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise InvalidRequest(f"pool_size must be an int >= 1, not {pool_size!r}")
        if not isinstance(poll_interval, int | float) or not poll_interval > 0:
            raise InvalidRequest(f"poll_interval must be a positive number, not {poll_interval!r}")
        self._tables = Tables(schema)
        # An unreachable server fails here within seconds, named (postgres_connect).
        conninfo = with_connect_timeout(conninfo)
        check_reachable(conninfo)
        self._given_clock = clock
        self._poll_interval = float(poll_interval)
        # Statements are sent unprepared, so each is planned with its actual
        # parameters and the partial indexes (whose predicates name states)
        # stay usable.  The enqueue statements read no partial index: they are
        # prepared (parsing and planning them cost more than running them),
        # unless a pooler cannot keep prepared statements.
        self._prepare = True if prepared_statements else None
        self._pool = ConnectionPool(
            conninfo,
            connection_class=PooledConnection,
            min_size=1,
            max_size=pool_size,
            kwargs={
                "autocommit": True,
                "prepare_threshold": NEVER_AUTOMATICALLY if prepared_statements else None,
            },
            num_workers=1,
            name=f"taskharbor-{schema}",
            open=True,
        )
        self.clock: Clock = clock if clock is not None else DatabaseClock(self._pool)
        self.capabilities = Capabilities(
            persistent=True,
            multi_process=True,
            transactional_enqueue=True,
            notifications=notifications,
            schedules=True,
            workflow_idempotency=True,
            queue_pause=True,
            failure_callbacks=True,
            partial_chords=True,
            flow_control=True,
            workers=True,
            job_metadata=True,
            key_scopes=True,
            finished_counts=True,
        )
        self._listener = (
            Listener(conninfo, self._tables.channel, self._tables.finished_channel)
            if notifications
            else None
        )
        self._schema_ok = False
        self._limited_recently = False
        """The last lease met jobs with flow limits (or came short while it did): the
        next one goes straight to ``lease_limited`` instead of trying the plain lease."""

    # -- lifecycle of the store ---------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema (``taskharbor migrate``); safe to run concurrently."""
        with self._pool.connection() as conn:
            migrate(conn, self._tables.schema)
        self._schema_ok = True

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._pool.close()

    # -- running one call ---------------------------------------------------------

    def _now(self) -> datetime | None:
        """The call's now when a clock was given; None lets SQL read the database clock."""
        return None if self._given_clock is None else self._given_clock.now()

    def _run(
        self, body: Callable[[psycopg.Cursor[Row], Params], T], *, transaction: bool = True
    ) -> T:
        """Run ``body`` in one transaction; again if PostgreSQL broke a deadlock with it.

        ``transaction=False`` is for a body whose writes are one statement and
        that raises nothing once it has written: PostgreSQL makes a statement
        atomic by itself, and BEGIN and COMMIT would make one round trip three.
        """
        attempt = 1
        while True:
            try:
                with self._pool.connection() as conn:
                    self._check_schema(conn)
                    with conn.transaction() if transaction else nullcontext():
                        return body(conn.calls_cursor(), self._tables.params(self._now()))
            except (pg_errors.DeadlockDetected, enqueueing.KeyReleased):
                if attempt >= RETRIES:
                    raise
                attempt += 1

    def _check_schema(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        if not self._schema_ok:
            check_schema(conn, self._tables.schema)
            self._schema_ok = True

    def _announce(self, cur: psycopg.Cursor[Row], moved: Sequence[Row]) -> None:
        """Wake listeners of the queues in which ``moved`` rows (queue, state) became available."""
        self._announce_queues(
            cur, [row["queue"] for row in moved if row["state"] == JobState.AVAILABLE]
        )

    def _announce_queues(self, cur: psycopg.Cursor[Row], queues: Sequence[str]) -> None:
        """Wake listeners of ``queues``; sent when the transaction commits, never if not."""
        if queues and self._listener is not None:
            cur.execute(_NOTIFY_QUEUES, self._wake_params(queues))

    async def _announce_queues_async(
        self, cur: psycopg.AsyncCursor[Row], queues: Sequence[str]
    ) -> None:
        """:meth:`_announce_queues` on an asynchronous cursor."""
        if queues and self._listener is not None:
            await cur.execute(_NOTIFY_QUEUES, self._wake_params(queues))

    def _announce_finished(
        self, cur: psycopg.Cursor[Row], job_ids: Sequence[JobId], workflow_ids: Iterable[WorkflowId]
    ) -> None:
        """Wake the waiters on ``job_ids``, and on the jobs of ``workflow_ids`` (whose
        cascades this call finished): one notice, sent when the transaction commits."""
        workflow_ids = list(workflow_ids)
        if (job_ids or workflow_ids) and self._listener is not None:
            notice = finished_notice(job_ids, workflow_ids)
            cur.execute(
                _NOTIFY_FINISHED, {"channel": self._tables.finished_channel, "notice": notice}
            )

    def _wake_params(self, queues: Sequence[str]) -> Params:
        return {"channel": self._tables.channel, "queues": sorted(set(queues))}

    # -- producing ----------------------------------------------------------

    def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[EnqueueResult]:
        """Store ``requests`` in one statement; in a transaction when it may have to be undone.

        A key found held is answered by a read of its holder, and a holder
        pruned meanwhile makes the call start over: a batch with keys must then
        undo the jobs it stored.  A single request stores its job or reads its
        key's holder, never both, so it has nothing to undo.
        """
        check_batch(requests, EnqueueRequest, "enqueue")
        undoable = len(requests) > 1 and any(r.idempotency_key is not None for r in requests)
        return self._run(
            lambda cur, params: self._enqueue_on(cur, requests, params["now"], self._prepare),
            transaction=undoable,
        )

    def enqueue_in(
        self, conn: psycopg.Connection[Any], requests: Sequence[EnqueueRequest]
    ) -> list[EnqueueResult]:
        """Enqueue on the caller's connection, inside the caller's transaction.

        Nothing is committed here: the jobs exist once the caller commits, and
        never if the caller rolls back.  Workers are woken at that commit.
        """
        check_batch(requests, EnqueueRequest, "enqueue")
        keyed = any(request.idempotency_key is not None for request in requests)

        def body(cur: psycopg.Cursor[Row], now: datetime | None) -> list[EnqueueResult]:
            return self._enqueue_on(cur, requests, now, prepare=None)

        return self._in_caller_transaction(conn, body, undoable=keyed)

    def enqueue_workflow_in(
        self, conn: psycopg.Connection[Any], graph: WorkflowGraph
    ) -> WorkflowRecord:
        """:meth:`enqueue_workflow` on the caller's connection, inside its transaction."""
        if not isinstance(graph, WorkflowGraph):
            raise InvalidRequest(f"enqueue_workflow_in needs a WorkflowGraph, not {graph!r}")

        def body(cur: psycopg.Cursor[Row], now: datetime | None) -> WorkflowRecord:
            return self._store_workflow(cur, graph, self._tables.params(now))

        return self._in_caller_transaction(conn, body, undoable=graph.idempotency_key is not None)

    def _in_caller_transaction(
        self,
        conn: psycopg.Connection[Any],
        body: Callable[[psycopg.Cursor[Row], datetime | None], T],
        *,
        undoable: bool,
    ) -> T:
        """Run ``body`` on the caller's connection; under a savepoint when it may start over.

        A key whose holder was pruned between the insert and the read
        (``KeyReleased``, possible under READ COMMITTED) rolls back to the
        savepoint and tries again; the caller's own work before it stays.  The
        savepoint is plain SQL, not ``conn.transaction()``: on a connection
        that is not in autocommit mode and has run nothing yet (a SQLAlchemy
        or Django transaction that has not written), psycopg would take that
        block for the outermost transaction and commit it.
        """
        if not isinstance(conn, psycopg.Connection):
            raise InvalidRequest(
                f"transactional enqueue needs a psycopg Connection, not {type(conn).__name__}"
                " (an AsyncConnection goes to the *_async methods)"
            )
        if not undoable:
            with conn.cursor(row_factory=dict_row) as cur:
                return body(cur, self._now())
        if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
            return self._own_transaction(conn, body)  # the caller has no transaction open
        attempt = 1
        with conn.cursor(row_factory=dict_row) as cur:
            while True:
                cur.execute("SAVEPOINT taskharbor_enqueue")
                try:
                    answer = body(cur, self._now())
                except enqueueing.KeyReleased:
                    cur.execute("ROLLBACK TO SAVEPOINT taskharbor_enqueue")
                    if attempt >= RETRIES:
                        raise
                    attempt += 1
                    continue
                finally:
                    if conn.info.transaction_status == TransactionStatus.INTRANS:
                        cur.execute("RELEASE SAVEPOINT taskharbor_enqueue")
                return answer

    def _own_transaction(
        self,
        conn: psycopg.Connection[Any],
        body: Callable[[psycopg.Cursor[Row], datetime | None], T],
    ) -> T:
        """``body`` in a transaction of its own on an autocommit connection, started over
        when a key's holder was pruned mid-call."""
        attempt = 1
        while True:
            try:
                with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    return body(cur, self._now())
            except enqueueing.KeyReleased:
                if attempt >= RETRIES:
                    raise
                attempt += 1

    async def enqueue_in_async(
        self, conn: psycopg.AsyncConnection[Any], requests: Sequence[EnqueueRequest]
    ) -> list[EnqueueResult]:
        """:meth:`enqueue_in` on an asynchronous connection."""
        check_batch(requests, EnqueueRequest, "enqueue")
        now = self._now()
        query, params = self._insert(requests, now)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            stored = enqueueing.created(requests, await cur.fetchone())
            held: list[Row] = []
            keys = enqueueing.unanswered_keys(requests, stored)
            if keys:
                await cur.execute(
                    enqueueing.held_statement(self._tables),
                    {**self._tables.params(now), "keys": keys},
                )
                held = await cur.fetchall()
        return enqueueing.results(requests, stored, held)

    async def enqueue_workflow_in_async(
        self, conn: psycopg.AsyncConnection[Any], graph: WorkflowGraph
    ) -> WorkflowRecord:
        """:meth:`enqueue_workflow_in` on an asynchronous connection."""
        if not isinstance(graph, WorkflowGraph):
            raise InvalidRequest(f"enqueue_workflow_in needs a WorkflowGraph, not {graph!r}")
        params = self._tables.params(self._now())
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(ALLOCATE_IDS, {**params, "n": id_count(graph)})
            allocated = await cur.fetchone()
            assert allocated is not None
            values = workflow_values(graph, allocated, params)
            await cur.execute(statements.insert_workflow(self._tables), values)
            row = await cur.fetchone()
            if row is None:  # the key is held
                key = str(graph.idempotency_key)
                await cur.execute(statements.workflow_by_key(self._tables), {"key": key})
                held = await cur.fetchone()
                if held is None:
                    raise enqueueing.KeyReleased(key)
                return workflow_record(held)
            await self._announce_queues_async(cur, row["ready"])
            if graph.on_failure is not None:
                values = callback_values(graph, allocated, params)
                await cur.execute(workflows.insert_callback(self._tables), values)
                row = await cur.fetchone()
                assert row is not None
            return workflow_record(row)

    def _insert(
        self, requests: Sequence[EnqueueRequest], now: datetime | None
    ) -> tuple[bytes, Params]:
        return enqueueing.insert(self._tables, requests, now, notify=self._listener is not None)

    def _enqueue_on(
        self,
        cur: psycopg.Cursor[Row],
        requests: Sequence[EnqueueRequest],
        now: datetime | None,
        prepare: bool | None,
    ) -> list[EnqueueResult]:
        """The insert, then a read of the holders of keys it found held.

        ``prepare`` is psycopg's: None leaves the choice to the connection's
        own setting (a caller's connection, in transactional enqueue).
        """
        query, params = self._insert(requests, now)
        answer = cur.execute(query, params, prepare=prepare).fetchone()
        stored = enqueueing.created(requests, answer)
        held: list[Row] = []
        keys = enqueueing.unanswered_keys(requests, stored)
        if keys:
            query = enqueueing.held_statement(self._tables)
            held = cur.execute(query, {**self._tables.params(now), "keys": keys}).fetchall()
        return enqueueing.results(requests, stored, held)

    def enqueue_workflow(self, graph: WorkflowGraph) -> WorkflowRecord:
        if not isinstance(graph, WorkflowGraph):
            raise InvalidRequest(f"enqueue_workflow needs a WorkflowGraph, not {graph!r}")
        return self._run(lambda cur, params: self._store_workflow(cur, graph, params))

    def _store_workflow(
        self, cur: psycopg.Cursor[Row], graph: WorkflowGraph, params: Params
    ) -> WorkflowRecord:
        """Insert the workflow and its steps in one statement, or read the holder of its key.

        A key's holder pruned between the two raises ``KeyReleased`` (the call
        starts over).  In a caller's REPEATABLE READ or SERIALIZABLE
        transaction, a holder committed after its snapshot makes the insert
        raise PostgreSQL's serialization failure instead: the caller's
        transaction must be retried, and its retry finds the holder.
        """
        allocated = cur.execute(ALLOCATE_IDS, {**params, "n": id_count(graph)}).fetchone()
        assert allocated is not None
        values = workflow_values(graph, allocated, params)
        row = cur.execute(statements.insert_workflow(self._tables), values).fetchone()
        if row is None:  # the key is held
            key = str(graph.idempotency_key)
            held = cur.execute(statements.workflow_by_key(self._tables), {"key": key}).fetchone()
            if held is None:
                raise enqueueing.KeyReleased(key)
            return workflow_record(held)
        self._announce_queues(cur, row["ready"])
        if graph.on_failure is not None:
            values = callback_values(graph, allocated, params)
            row = cur.execute(workflows.insert_callback(self._tables), values).fetchone()
            assert row is not None
        return workflow_record(row)

    # -- consuming ----------------------------------------------------------

    def lease(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker_id: str,
    ) -> list[JobRecord]:
        args = check_lease_args(queues, limit, lease_seconds, worker_id)

        def body(cur: psycopg.Cursor[Row], params: Params) -> tuple[list[JobRecord], list[Failure]]:
            values = {
                **params,
                "queues": list(args.queues),
                "limit": args.limit,
                "seconds": args.lease_seconds,
                "worker": args.worker_id,
            }
            rows: list[Row] = []
            if not self._limited_recently:
                query = statements.lease(self._tables, one_queue=len(args.queues) == 1)
                found = cur.execute(query, values).fetchall()
                rows = [row for row in found if row["id"] is not None]
                if not found or not found[0]["limited"]:
                    return split_leased(rows, job_record)
            # Limited candidates: lease_limited walks on from where the plain lease stopped.
            values["limit"] = args.limit - len(rows)
            more = cur.execute(flow.lease_limited(self._tables), values).fetchall()
            self._limited_recently = len(more) < values["limit"] or any(
                row["flow"] is not None for row in more
            )
            return split_leased([*rows, *more], job_record)

        leased, corrupt = self._run(body, transaction=False)
        if corrupt:
            self.fail(corrupt)
        return sorted(leased, key=lambda job: (-job.priority, job.run_at, job.id))

    def heartbeat(self, leases: Sequence[LeaseRef], lease_seconds: float) -> HeartbeatResult:
        check_batch(leases, LeaseRef, "heartbeat")
        seconds = check_lease_seconds(lease_seconds)
        values = {
            "seconds": seconds,
            "progress": [None if ref.progress is None else ref.progress.value for ref in leases],
            "messages": [None if ref.progress is None else ref.progress.message for ref in leases],
        }

        def body(cur: psycopg.Cursor[Row], params: Params) -> HeartbeatResult:
            rows = self._fenced(cur, params, JobEvent.HEARTBEAT, leases, values)
            asked = frozenset(
                row["id"] for row in rows if row["applied"] and row["cancel_requested"]
            )
            return HeartbeatResult(tuple(_lost(rows)), asked)

        return self._run(body)

    def complete(self, completions: Sequence[Completion]) -> list[LeaseLost]:
        check_batch(completions, Completion, "complete")
        values = {"results": [Json(item.result) for item in completions]}

        def body(cur: psycopg.Cursor[Row], params: Params) -> list[LeaseLost]:
            rows = self._fenced(cur, params, JobEvent.SUCCEED, completions, values)
            steps = [row for row in rows if row["applied"] and row["workflow_id"] is not None]
            if steps:
                ids = [row["id"] for row in steps]
                released = workflows.after_succeeded(cur, self._tables, params, ids)
                touched = {row["workflow_id"] for row in steps}
                released += workflows.derive(cur, self._tables, params, touched)
                self._announce(cur, released)
            return _lost(rows)

        return self._run(body)

    def fail(self, failures: Sequence[Failure]) -> list[LeaseLost]:
        check_batch(failures, Failure, "fail")
        values = {
            "reports": [
                Json(
                    {
                        "type": item.error.type,
                        "message": item.error.message,
                        "traceback": item.error.traceback,
                    }
                )
                for item in failures
            ],
            "retry_at": [item.retry_at for item in failures],
            "permanent": [item.permanent for item in failures],
        }
        return self._run(
            lambda cur, params: self._report_end(cur, params, JobEvent.FAIL, failures, values)
        )

    def snooze(self, requests: Sequence[SnoozeRequest]) -> list[LeaseLost]:
        check_batch(requests, SnoozeRequest, "snooze")
        values = {"run_at": [item.run_at for item in requests]}
        return self._run(
            lambda cur, params: self._report_end(cur, params, JobEvent.SNOOZE, requests, values)
        )

    def _report_end(
        self,
        cur: psycopg.Cursor[Row],
        params: Params,
        event: JobEvent,
        items: Sequence[LeaseRef | Failure | SnoozeRequest],
        values: Params,
    ) -> list[LeaseLost]:
        """A fenced ``fail`` or ``snooze``, then the cascades of steps that ended badly."""
        rows = self._fenced(cur, params, event, items, values)
        self._after_steps_ended(cur, params, [row for row in rows if row["applied"]])
        return _lost(rows)

    def _fenced(
        self,
        cur: psycopg.Cursor[Row],
        params: Params,
        event: JobEvent,
        items: Sequence[LeaseRef | Completion | Failure | SnoozeRequest],
        values: Params,
    ) -> list[Row]:
        """Run the fenced statement of ``event``; one row per item, in request order."""
        ids = [item.job_id for item in items]
        query = statements.fenced(self._tables, event, notify=self._listener is not None)
        all_values = {
            **params,
            **values,
            "finished_channel": self._tables.finished_channel,
            "ids": _storable(ids),
            "tokens": [item.token for item in items],
            "by_request": CANCELLED_BY_REQUEST,
        }
        rows = cur.execute(query, all_values).fetchall()
        # an id no bigint holds went in as 0: report the id the caller gave
        return [{**row, "id": job_id} for job_id, row in zip(ids, rows, strict=True)]

    def _after_steps_ended(
        self, cur: psycopg.Cursor[Row], params: Params, rows: Sequence[Row]
    ) -> None:
        """Cascade from workflow steps that just ended dead or cancelled; derive their workflows.

        ``rows`` are in the order the call applied them (id, state, workflow_id).
        """
        steps = [row for row in rows if row["workflow_id"] is not None]
        ended = [row for row in steps if workflows.ended_badly(row["state"])]
        if not ended:
            return
        origins = [(row["id"], dependency_reason(row["id"], row["state"])) for row in ended]
        workflows.cascade(cur, self._tables, params, origins)
        dead: dict[WorkflowId, list[JobId]] = {}
        for row in ended:
            if row["state"] == JobState.DEAD:
                dead.setdefault(row["workflow_id"], []).append(row["id"])  # in call order
        touched = {row["workflow_id"] for row in ended}
        self._announce(cur, workflows.derive(cur, self._tables, params, touched, dead=dead))

    # -- operators ------------------------------------------------------------

    def _lock_named(
        self, cur: psycopg.Cursor[Row], params: Params, ids: Sequence[JobId]
    ) -> list[Row]:
        """Lock the named jobs; their rows in the order named, or ``JobNotFound``."""
        query = statements.lock_for_operator(self._tables)
        rows = {row["id"]: row for row in cur.execute(query, {**params, "ids": _storable(ids)})}
        for job_id in ids:
            if job_id not in rows:
                raise JobNotFound(job_id)
        return [rows[job_id] for job_id in ids]

    def cancel(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        ids = job_ids(job_ids_, "cancel")

        def body(cur: psycopg.Cursor[Row], params: Params) -> list[JobRecord]:
            rows = self._lock_named(cur, params, ids)
            running = [row["id"] for row in rows if row["state"] == JobState.RUNNING]
            origins = []
            for row in rows:
                if row["state"] != JobState.RUNNING:
                    target = JOB.resolve(JobEvent.CANCEL, row["state"], subject=row["id"])
                    origins.append((row["id"], dependency_reason(row["id"], target)))
            if running:
                query = statements.ask_to_cancel(self._tables, "j.id = ANY(%(ids)s::bigint[])")
                cur.execute(query, {**params, "ids": running})
            touched = workflows.cascade(
                cur, self._tables, params, origins, self_reason=CANCELLED_BY_REQUEST
            )
            self._announce(cur, workflows.derive(cur, self._tables, params, touched))
            self._announce_finished(cur, [job_id for job_id, _ in origins], touched)
            return self._records(cur, params, ids)

        return self._run(body)

    def requeue(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        ids = job_ids(job_ids_, "requeue")

        def body(cur: psycopg.Cursor[Row], params: Params) -> list[JobRecord]:
            rows = self._lock_named(cur, params, ids)
            for row in rows:
                JOB.resolve(JobEvent.REQUEUE, row["state"], subject=row["id"])
            touched = {row["workflow_id"] for row in rows if row["workflow_id"] is not None}
            moved = workflows.requeue(cur, self._tables, params, ids, touched)
            moved += workflows.derive(cur, self._tables, params, touched)
            self._announce(cur, moved)
            return self._records(cur, params, ids)

        return self._run(body)

    # -- maintenance ----------------------------------------------------------

    def promote(self) -> PromoteResult:
        def body(cur: psycopg.Cursor[Row], params: Params) -> PromoteResult:
            moved = cur.execute(statements.promote(self._tables), params).fetchall()
            self._announce(cur, moved)
            row = cur.execute(statements.next_due(self._tables), params).fetchone()
            assert row is not None
            due = row["next_due"]
            return PromoteResult(len(moved), None if due is None else _utc(due))

        return self._run(body)

    def rescue(self) -> list[JobId]:
        def body(cur: psycopg.Cursor[Row], params: Params) -> list[JobId]:
            expired = cur.execute(statements.expired(self._tables), params).fetchall()
            if not expired:
                return []
            report = Json({"type": LEASE_EXPIRED_TYPE, "message": LEASE_EXPIRED_MESSAGE})
            values = {
                **params,
                "report": report,
                "by_request": CANCELLED_BY_REQUEST,
                "ids": [row["id"] for row in expired],
                "delays_us": [
                    retry_delay(rescue_policy(row["id"], row["retry"]), row["id"], row["attempt"])
                    // _MICROSECOND
                    for row in expired
                ],
            }
            rows = sorted(
                cur.execute(statements.rescue(self._tables), values).fetchall(),
                key=lambda row: row["id"],
            )
            self._announce(cur, rows)
            self._after_steps_ended(cur, params, rows)
            ended = [row for row in rows if row["state"] in FINISHED_JOB_STATES]
            self._announce_finished(
                cur,
                [row["id"] for row in ended],
                {row["workflow_id"] for row in ended if row["workflow_id"] is not None},
            )
            return [row["id"] for row in rows]

        return self._run(body)

    def prune(
        self,
        finished_before: datetime,
        states: Collection[JobState] = PRUNED_BY_DEFAULT,
        *,
        dry_run: bool = False,
    ) -> int:
        """Delete old finished jobs, in batches of :data:`PRUNE_BATCH` rows.

        Each batch is its own transaction so that pruning a large backlog never
        holds locks for long; a batch never splits a workflow.  A dry run is one
        count, locking nothing.
        """
        check_aware(finished_before, "finished_before")
        pruned = sorted(state.value for state in check_prune_states(states))
        values = {"before": finished_before, "batch": PRUNE_BATCH, "states": pruned}
        if dry_run:
            query = statements.count_prunable(self._tables)

            def count(cur: psycopg.Cursor[Row], params: Params) -> int:
                row = cur.execute(query, {**params, **values}).fetchone()
                assert row is not None
                return int(row["n"])

            return self._run(count, transaction=False)
        single_jobs = statements.prune_jobs(self._tables)
        whole_workflows = statements.prune_workflows(self._tables)

        def jobs_batch(cur: psycopg.Cursor[Row], params: Params) -> tuple[int, int]:
            deleted = cur.execute(single_jobs, {**params, **values}).rowcount
            return deleted, deleted

        def workflows_batch(cur: psycopg.Cursor[Row], params: Params) -> tuple[int, int]:
            row = cur.execute(whole_workflows, {**params, **values}).fetchone()
            assert row is not None
            return row["jobs"], row["workflows"]

        total = 0
        for batch in (jobs_batch, workflows_batch):
            while True:
                deleted, units = self._run(batch)
                total += deleted
                if units < PRUNE_BATCH:
                    break
        return total

    # -- reading --------------------------------------------------------------

    def _records(
        self, cur: psycopg.Cursor[Row], params: Params, ids: Sequence[JobId]
    ) -> list[JobRecord]:
        query = statements.select_jobs(self._tables)
        values = {**params, "ids": _storable(ids)}
        found = {row["id"]: job_record(row) for row in cur.execute(query, values)}
        for job_id in ids:
            if job_id not in found:
                raise JobNotFound(job_id)
        return [found[job_id] for job_id in ids]

    def get(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        ids = job_ids(job_ids_, "get", distinct=False)
        return self._run(lambda cur, params: self._records(cur, params, ids), transaction=False)

    def list_jobs(self, where: JobFilter) -> list[JobRecord]:
        if not isinstance(where, JobFilter):
            raise InvalidRequest(f"list_jobs needs a JobFilter, not {where!r}")
        states = None if where.states is None else sorted(s.value for s in where.states)
        one_state = states is not None and len(states) == 1
        asked: Params = {
            "states": None if one_state else states,
            "state": states[0] if states is not None and one_state else None,
            "task": where.task,
            "queue": where.queue,
            "workflow_id": where.workflow_id,
            "after_id": where.after_id,
            "before_id": where.before_id,
            "created_since": where.created_since,
            "tag": where.tag,
        }
        values = {name: value for name, value in asked.items() if value is not None}
        query = statements.list_jobs(self._tables, tuple(values), where.newest_first)
        values["limit"] = where.limit
        return self._run(
            lambda cur, params: [
                job_record(row) for row in cur.execute(query, {**params, **values}).fetchall()
            ],
            transaction=False,
        )

    def list_workflows(self, where: WorkflowFilter) -> list[WorkflowRecord]:
        if not isinstance(where, WorkflowFilter):
            raise InvalidRequest(f"list_workflows needs a WorkflowFilter, not {where!r}")
        asked: Params = {
            "states": None if where.states is None else sorted(s.value for s in where.states),
            "name": where.name,
            "after_id": where.after_id,
            "before_id": where.before_id,
        }
        values = {name: value for name, value in asked.items() if value is not None}
        query = statements.list_workflows(self._tables, tuple(values), where.newest_first)
        values["limit"] = where.limit
        return self._run(
            lambda cur, params: [
                workflow_record(row) for row in cur.execute(query, {**params, **values}).fetchall()
            ],
            transaction=False,
        )

    def count(self) -> Mapping[tuple[str, JobState], int]:
        query = statements.count_jobs(self._tables)
        rows = self._run(lambda cur, params: cur.execute(query).fetchall(), transaction=False)
        return {(row["queue"], JobState(row["state"])): row["n"] for row in rows}

    def finished_per_minute(
        self, since: datetime, *, queue: str | None = None
    ) -> list[FinishedCount]:
        """One index-only range of ``jobs_finished_counts``, grouped by the server.

        Now is read first (the database clock's, unless one was given), to check
        ``since`` before the query runs."""
        check_history_queue(queue)
        start = check_history_since(since, self.clock.now())
        query = statements.finished_per_minute(self._tables)
        values = {"since": start, "queue": queue}
        rows = self._run(
            lambda cur, params: cur.execute(query, values).fetchall(), transaction=False
        )
        return [
            FinishedCount(_utc(row["minute"]), row["queue"], JobState(row["state"]), row["n"])
            for row in rows
        ]

    def get_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        return self._run(
            lambda cur, params: self._workflow(cur, params, workflow_id), transaction=False
        )

    def _workflow(
        self, cur: psycopg.Cursor[Row], params: Params, workflow_id: WorkflowId
    ) -> WorkflowRecord:
        if isinstance(workflow_id, bool) or not isinstance(workflow_id, int):
            raise InvalidRequest(f"workflow id must be an int, not {workflow_id!r}")
        if not 0 < workflow_id <= BIGINT_MAX:
            raise WorkflowNotFound(workflow_id)
        query = statements.select_workflow(self._tables)
        row = cur.execute(query, {**params, "id": workflow_id}).fetchone()
        if row is None:
            raise WorkflowNotFound(workflow_id)
        return workflow_record(row)

    def cancel_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        def body(cur: psycopg.Cursor[Row], params: Params) -> WorkflowRecord:
            workflow = self._workflow(cur, params, workflow_id)
            if workflow.state in WORKFLOW.final_states:
                raise InvalidTransition.workflow_finished(workflow_id, workflow.state)
            values = {**params, "workflow_id": workflow_id, "reason": WORKFLOW_CANCELLED}
            cur.execute(
                statements.ask_to_cancel(
                    self._tables, "j.workflow_id = %(workflow_id)s", with_reason=True
                ),
                values,
            )
            cur.execute(statements.cancel_workflow_steps(self._tables), values)
            workflows.derive(cur, self._tables, params, [workflow_id])
            self._announce_finished(cur, [], [workflow_id])
            return self._workflow(cur, params, workflow_id)

        return self._run(body)

    # -- waiting --------------------------------------------------------------

    def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Wake on a notification for ``queues``; poll the table while the listener is away."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._listener is not None:
            self._listener.start(settle=min(timeout, 1.0))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._listener is not None:
                woken = self._listener.wait(queues, left)
                if woken is not None:
                    return
            if self._ready(queues):
                return
            if sleep_until(deadline, self._poll_interval) <= 0:
                return

    def wait_for_finished(self, job_ids_: Sequence[JobId], timeout: float) -> None:
        """Wake on a notice for the jobs or their workflows; poll while the listener is away."""
        ids = job_ids(job_ids_, "wait_for_finished", distinct=False)
        seconds = wait_timeout(timeout, "wait_for_finished")
        deadline = time.monotonic() + seconds
        listener = self._listener
        if listener is None:
            time.sleep(seconds)
            return
        listener.start(settle=min(deadline - time.monotonic(), 1.0))
        while True:
            connected = listener.connected
            watch = listener.finished.watch(ids)
            try:
                workflow_ids = self._unfinished_workflows(ids)
                left = deadline - time.monotonic()
                if workflow_ids is None or left <= 0:
                    return
                if connected:
                    listener.finished.sleep(watch, workflow_ids, left)
                    return
            finally:
                listener.finished.forget(watch)
            if sleep_until(deadline, self._poll_interval) <= 0:
                return

    def _unfinished_workflows(self, ids: Sequence[JobId]) -> set[WorkflowId] | None:
        """The workflows of ``ids``; None when one of them is finished or not stored."""
        query = statements.states_of(self._tables)

        def body(cur: psycopg.Cursor[Row], params: Params) -> set[WorkflowId] | None:
            rows = cur.execute(query, {"ids": _storable(ids)}).fetchall()
            if len(rows) < len(set(ids)) or any(
                row["state"] in FINISHED_JOB_STATES for row in rows
            ):
                return None
            return {row["workflow_id"] for row in rows if row["workflow_id"] is not None}

        return self._run(body, transaction=False)

    def _ready(self, queues: Sequence[str]) -> bool:
        query = statements.any_ready(self._tables)

        def body(cur: psycopg.Cursor[Row], params: Params) -> bool:
            row = cur.execute(query, {**params, "queues": list(queues)}).fetchone()
            return bool(row and row["ready"])

        return self._run(body, transaction=False)


_MICROSECOND = timedelta(microseconds=1)


def _lost(rows: Sequence[Row]) -> list[LeaseLost]:
    """The refused items of a fenced call, in request order (a job no longer stored is
    a lost lease for that item only)."""
    return [
        LeaseLost.missing(row["id"], row["token"])
        if row["missing"]
        else LeaseLost.stale(row["id"], row["token"], JobState(row["state"]))
        for row in rows
        if not row["applied"]
    ]


def _storable(ids: Sequence[JobId]) -> list[JobId]:
    """``ids`` for a ``bigint[]`` parameter: an id no bigint can hold becomes 0, never stored."""
    return [job_id if 0 < job_id <= BIGINT_MAX else 0 for job_id in ids]


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
