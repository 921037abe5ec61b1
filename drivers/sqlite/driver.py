"""The SQLite driver: the durable embedded default, safe for several processes on one machine.

One file holds the store, in WAL mode so readers never wait for the writer.
Every mutating call is one ``BEGIN IMMEDIATE`` transaction: SQLite lets one
writer at a time take it (others wait up to the busy timeout), so two
processes never lease the same job, fencing checks and their writes are
atomic, and a workflow step's release or cascade commits with the call that
finished the step.  Idempotency keys are guarded by a partial ``UNIQUE``
index.

Durability: what a caller asked for is on disk when the call returns, even
across a power loss: ``enqueue``, ``enqueue_workflow``, ``cancel``,
``cancel_workflow`` and ``requeue`` commit with ``synchronous = FULL``, which
flushes the write-ahead log, and with it every commit before theirs.  The
worker's own calls (``lease``, ``heartbeat``, ``complete``, ``fail``,
``snooze``, ``promote``, ``rescue``, ``prune``) commit with ``synchronous =
NORMAL``: they survive the crash of any process, but a power loss or an
operating-system crash may undo the last of them (those after the last flush;
the file stays consistent, at the state after some earlier call).  Undoing one
only makes work happen again, which at-least-once delivery allows: a job whose
report was undone is ``running`` again and is rescued when its lease expires.
Skipping that flush is most of the cost of a lease or a report.

Each thread gets its own connection (SQLite connections are not meant to be
shared between threads); :meth:`SQLiteDriver.close` closes all of them, each
once the call using it (if any) has returned.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cache
from itertools import groupby
from pathlib import Path
from typing import NamedTuple, TypeVar

from taskharbor.spec import (
    CANCELLED_BY_REQUEST,
    JOB,
    WORKFLOW,
    WORKFLOW_CANCELLED,
    Capabilities,
    Clock,
    Completion,
    CorruptJob,
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
    JobRecord,
    JobState,
    LeaseLost,
    LeaseRef,
    PromoteResult,
    SchemaError,
    SnoozeRequest,
    SystemClock,
    WorkflowFilter,
    WorkflowGraph,
    WorkflowId,
    WorkflowNotFound,
    WorkflowRecord,
    WorkflowState,
)
from taskharbor.spec.flow import FlowLimits, flow_text
from taskharbor.spec.history import FinishedCount, check_history_queue, check_history_since
from taskharbor.spec.keys import holds_key, scope_text
from taskharbor.spec.records import (
    LEASE_EXPIRED_MESSAGE,
    LEASE_EXPIRED_TYPE,
    PRUNABLE_WORKFLOW_STATES,
    PRUNED_BY_DEFAULT,
    check_aware,
    check_batch,
    check_lease_args,
    check_lease_seconds,
    check_prune_states,
    check_queues,
    check_workflow_id,
    job_ids,
    map_ref,
    tolerated_steps,
)
from taskharbor.spec.retry import policy_text, retry_delay
from taskharbor.spec.table import NEW, QUEUED_JOB_STATES

from ..corrupt_rows import progress_to_json, rescue_policy, split_leased
from ..flow_gate import FlowGate
from . import schema as sqlite_schema
from .flow import SQLiteFlowCounts, record_starts
from .queues import SQLiteQueues, leased_queues
from .rows import (
    JOB_COLUMNS,
    dump_json,
    error_entry,
    from_micros,
    job_record,
    load_json,
    to_micros,
    workflow_record,
)
from .schedules import SQLiteSchedules
from .transitions import (
    DUE_ROWS,
    FINISHED_STATES,
    GIVE_UP_KEY,
    LEASE_JOBS,
    LEASED_ROWS,
    TOKEN_CHARS,
    leaving_running,
    literal_list,
    ready_jobs_query,
    target_case,
)
from .walk import walk
from .workers import SQLiteWorkers, mark_seen
from .writes import INTEGER_MAX, Writes

BUSY_TIMEOUT_SECONDS = 30.0
"""How long a call waits for another process's write transaction before failing."""

WAIT_POLL_SECONDS = 0.05
"""How often :meth:`SQLiteDriver.wait_for_jobs` looks for jobs that fell due."""

CHANGE_POLL_SECONDS = 0.002
"""How often :meth:`SQLiteDriver.wait_for_jobs` asks whether the file changed (a cheap
pragma, no read): the wake-up delay after another process enqueues."""

_DURABLE = "PRAGMA synchronous = FULL"
"""Commit flushes the write-ahead log: the call survives a power loss."""

_NOT_FLUSHED = "PRAGMA synchronous = NORMAL"
"""Commit leaves the flush to the next durable commit or checkpoint (worker calls)."""

_PROMOTE_CASE, _PROMOTE_PARAMS = target_case(JobEvent.PROMOTE)
_PROMOTE = f"UPDATE jobs SET state = {_PROMOTE_CASE} WHERE {DUE_ROWS} AND run_at <= :now"
_NEXT_DUE = f"SELECT MIN(run_at) FROM jobs WHERE {DUE_ROWS}"

_LEAVING_RUNNING_PARAMS = {
    "cancelled": JobState.CANCELLED.value,
    "by_request": CANCELLED_BY_REQUEST,
}
"""The parameters of :func:`leaving_running`'s assignments (with ``:now``)."""

_EXPIRED = f"SELECT id, attempt, retry FROM jobs WHERE {LEASED_ROWS} AND lease_expires_at <= :now"
"""The leases a rescue ends: each job's retry time is computed from these, in Python."""

_RESCUE_CASE, _RESCUE_PARAMS = target_case(JobEvent.LEASE_EXPIRED)
_RESCUE_EFFECTS = leaving_running("expired.target")
_RESCUE = f"""
    UPDATE jobs SET
        state = expired.target,
        errors = json_insert(errors, '$[#]', json_object(
            'attempt', attempt, 'at', :now, 'type', :error_type,
            'message', :error_message, 'traceback', NULL)),
        run_at = CASE WHEN expired.target = :retrying THEN expired.retry_at ELSE run_at END,
        {_RESCUE_EFFECTS}
    FROM (
        SELECT id, {_RESCUE_CASE} AS target, json_extract(:retry_at, '$.' || id) AS retry_at
        FROM jobs WHERE id IN (SELECT value FROM json_each(:ids))
    ) AS expired
    WHERE jobs.id = expired.id
    RETURNING jobs.id, jobs.state, jobs.workflow_id
"""
"""Event ``lease_expired`` for the jobs ``:ids`` lists; ``:retry_at`` maps each id to its
retry time (microseconds), taken when the event's target is ``retrying``."""

_SUCCEED_CASE, _SUCCEED_PARAMS = target_case(JobEvent.SUCCEED)
_COMPLETE_EFFECTS = leaving_running("done.target")
_COMPLETE = f"""
    UPDATE jobs SET state = done.target, result = done.result, {_COMPLETE_EFFECTS}
    FROM (
        SELECT job.id, {_SUCCEED_CASE} AS target, json_extract(item.value, '$[2]') AS result
        FROM json_each(:items) AS item
        JOIN jobs AS job ON job.id = json_extract(item.value, '$[0]')
        WHERE job.state = :running AND job.lease_token = json_extract(item.value, '$[1]')
    ) AS done
    WHERE jobs.id = done.id
    RETURNING jobs.id, jobs.state, jobs.workflow_id
"""
"""Event ``succeed`` for every live lease of ``:items``, a JSON array of ``[job id, token,
result as JSON text]``; returns the rows it changed (in no particular order)."""

_PRUNED_STATES = "(SELECT value FROM json_each(:states))"
"""The states a prune deletes: a JSON array parameter."""
_PRUNED_JOBS = f"""
    workflow_id IS NULL AND state IN {FINISHED_STATES} AND state IN {_PRUNED_STATES}
    AND finished_at < :horizon
"""
_PRUNABLE_WORKFLOW_STATES = literal_list(PRUNABLE_WORKFLOW_STATES)
_PRUNED_STEPS = f"""
    workflow_id IN (
        SELECT w.id FROM workflows AS w
        WHERE w.state IN {_PRUNABLE_WORKFLOW_STATES} AND NOT EXISTS (
            SELECT 1 FROM jobs AS step
            WHERE step.workflow_id = w.id
            AND NOT (step.state IN {_PRUNED_STATES} AND COALESCE(step.finished_at < :horizon, 0))
        )
    )
"""
"""The jobs a prune deletes: old finished jobs outside workflows, and the steps of
finished workflows whose every step qualifies (``WHERE`` conditions, for the delete
and for a dry run's count)."""
_PRUNE_JOBS = f"DELETE FROM jobs WHERE {_PRUNED_JOBS}"
_PRUNE_STEPS = f"DELETE FROM jobs WHERE {_PRUNED_STEPS}"
_COUNT_PRUNABLE = (
    f"SELECT (SELECT COUNT(*) FROM jobs WHERE {_PRUNED_JOBS})"
    f" + (SELECT COUNT(*) FROM jobs WHERE {_PRUNED_STEPS})"
)
_FINISHED_ROWS = f"finished_at >= :since AND state IN {FINISHED_STATES}"
"""The finished jobs of ``finished_per_minute``'s window: a range of the partial index
``jobs_finished_counts`` (``finished_at >= :since`` implies its ``IS NOT NULL``)."""
_FINISHED_GROUPS = (
    # :since is a minute's start and finished_at >= :since: the division never rounds
    # a negative number, and the bucket is the minute's start in microseconds.
    "SELECT :since + (finished_at - :since) / 60000000 * 60000000 AS minute, queue, state,"
    " COUNT(*) AS n FROM jobs WHERE {} GROUP BY minute, queue, state"
    " ORDER BY minute, queue, state"
)
_FINISHED_PER_MINUTE = _FINISHED_GROUPS.format(_FINISHED_ROWS)
_FINISHED_PER_MINUTE_OF_QUEUE = _FINISHED_GROUPS.format(f"{_FINISHED_ROWS} AND queue = :queue")
_PRUNE_WORKFLOWS = f"""
    DELETE FROM workflows
    WHERE state IN {_PRUNABLE_WORKFLOW_STATES}
    AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.workflow_id = workflows.id)
"""


class _Connection(NamedTuple):
    """One thread's connection; ``lock`` is held while a call uses it."""

    conn: sqlite3.Connection
    lock: threading.Lock
    pid: int


class SQLiteDriver(SQLiteSchedules, SQLiteQueues, SQLiteWorkers, Driver):
    """A job store in one SQLite file.  Implements :class:`~taskharbor.spec.spi.Driver`.

    ``migrate=True`` creates or upgrades the schema when the store is opened;
    with ``False`` (an operator runs ``taskharbor migrate``) a store whose
    schema is not current raises :class:`~taskharbor.spec.errors.SchemaError`
    at its first call; so does a file that does not exist, which is not
    created until :meth:`migrate` is called (SQLite opens the file read-write
    only, never creating it, so a file removed later is not created either).
    A file that is not a TaskHarbor SQLite store raises
    :class:`~taskharbor.drivers.sqlite.schema.DatabaseFileError` and is left
    untouched; so does a call that the file or its disk fails (full, I/O
    error, read-only, locked by another process for longer than
    :data:`BUSY_TIMEOUT_SECONDS`), naming the file and the problem.  Such a
    call changes nothing.
    """

    capabilities = Capabilities(
        persistent=True,
        multi_process=True,
        transactional_enqueue=True,
        schedules=True,
        flow_control=True,
        workflow_idempotency=True,
        key_scopes=True,
        queue_pause=True,
        failure_callbacks=True,
        partial_chords=True,
        workers=True,
        job_metadata=True,
        finished_counts=True,
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        migrate: bool = True,
    ) -> None:
        self.clock = clock or SystemClock()
        self.path = Path(os.fspath(path))
        if str(path) in ("", ":memory:"):
            raise InvalidRequest(
                f"SQLiteDriver needs a file path, not {str(path)!r} (for a store in memory "
                "use the memory driver)"
            )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handles: list[_Connection] = []
        self._closed = False
        self._schema_current = False
        self._may_create = migrate
        """Whether a connection may create the file: only once migrating was asked for."""
        sqlite_schema.check_path(self.path)
        try:
            if migrate:
                self.migrate()
            elif os.path.lexists(self.path):
                with self._using() as conn:
                    sqlite_schema.stored_version(conn, self.path)
        except BaseException:
            self.close()
            raise

    # -- lifecycle of the store ---------------------------------------------------

    def migrate(self) -> None:
        self._may_create = True
        with self._using() as conn:
            sqlite_schema.migrate(conn, self.path)
        self._schema_current = True

    def close(self) -> None:
        """Close every thread's connection, each once no call is using it.

        Connections inherited from a parent process are left alone: closing
        one here could checkpoint or remove the WAL under the parent's feet.
        """
        with self._lock:
            self._closed = True
            handles, self._handles = self._handles, []
        for handle in handles:
            if handle.pid == os.getpid():
                with handle.lock:
                    handle.conn.close()

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, held so that :meth:`close` waits for the call.

        Every SQLite call of the driver runs in here, so this is the one place
        where a failure of the file or its disk (full, I/O error, read-only,
        locked by another process) becomes a
        :class:`~taskharbor.drivers.sqlite.schema.DatabaseFileError` naming the
        file and the problem, the SQLite error chained.  Any other SQLite error
        (bad SQL, a wrong parameter: a bug) is raised as it is.
        """
        try:
            handle = self._handle()
            with handle.lock:
                if self._closed:
                    raise InvalidRequest(f"the SQLite store {self.path} is closed")
                yield handle.conn
        except sqlite3.Error as exc:
            error = sqlite_schema.storage_error(self.path, exc, BUSY_TIMEOUT_SECONDS)
            if error is None:
                raise
            raise error from exc

    def _handle(self) -> _Connection:
        """This thread's connection (a new one after a fork: never share one with a parent)."""
        handle: _Connection | None = getattr(self._local, "handle", None)
        if handle is not None and handle.pid == os.getpid():
            return handle
        with self._lock:
            if self._closed:
                raise InvalidRequest(f"the SQLite store {self.path} is closed")
            conn = self._connect()
            handle = _Connection(conn, threading.Lock(), os.getpid())
            self._handles.append(handle)
        self._local.handle = handle
        return handle

    def _connect(self) -> sqlite3.Connection:
        """A new connection, set up for this driver; a file SQLite refuses is named.

        A failure of the file or its disk is left to :meth:`_using` to name.
        Until :meth:`migrate` is called on a driver opened with ``migrate=False``,
        a missing file is refused with ``SchemaError``, not created.
        """
        if not self._may_create and not os.path.lexists(self.path):
            raise SchemaError(
                f"{self.path} does not exist (opened with migrate=False, so it is not "
                "created): create it with `taskharbor migrate` or open it with migrate=True"
            )
        try:
            conn = sqlite3.connect(
                self.path if self._may_create else _existing_file_uri(self.path),
                uri=not self._may_create,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            if sqlite_schema.is_storage_failure(exc):
                raise
            raise sqlite_schema.DatabaseFileError(f"cannot open {self.path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            conn.execute(_DURABLE)  # for the migrations, which commit outside _transaction
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if sqlite_schema.is_storage_failure(exc):
                raise
            raise sqlite_schema.unusable_file(self.path, exc) from exc
        return conn

    @contextmanager
    def _transaction(self, *, write: bool = True, durable: bool = True) -> Iterator[Writes]:
        """One SPI call: ``BEGIN IMMEDIATE`` (or a read snapshot), committed only if it returns.

        A call that fails, its commit included (a full disk fails there, when
        the write-ahead log grows), is rolled back: it changes nothing.
        ``durable=False`` for the worker's calls: their commit does not flush
        the write-ahead log (see the module's docstring).  The setting is the
        connection's, and SQLite takes it only outside a transaction.
        """
        with self._using() as conn:
            if not self._schema_current:
                sqlite_schema.require_current(conn, self.path)
                self._schema_current = True
            if write:
                conn.execute(_DURABLE if durable else _NOT_FLUSHED)
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                # Read once the write lock is held, so that the writes of calls
                # from every process are in the order of their "now".
                writes = Writes(conn, self.clock.now())
                yield writes
                writes.settle_callbacks()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself after some failures
                    conn.execute("ROLLBACK")
                raise

    # -- producing ----------------------------------------------------------------

    def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[EnqueueResult]:
        """Event ``enqueue`` for each request, in order.

        Each run of requests without an idempotency key is one ``executemany``;
        a request with a key is looked up first, one at a time, so that it sees
        the jobs of the requests before it.
        """
        check_batch(requests, EnqueueRequest, "enqueue")
        with self._transaction() as tx:
            return self._enqueue_on(tx, requests)

    def enqueue_in(
        self, conn: sqlite3.Connection, requests: Sequence[EnqueueRequest]
    ) -> list[EnqueueResult]:
        """:meth:`enqueue` on the caller's ``sqlite3`` connection to this store's file,
        inside the caller's transaction (see :meth:`_caller_transaction`)."""
        check_batch(requests, EnqueueRequest, "enqueue")
        with self._caller_transaction(conn) as tx:
            return self._enqueue_on(tx, requests)

    def _enqueue_on(self, tx: Writes, requests: Sequence[EnqueueRequest]) -> list[EnqueueResult]:
        results: list[EnqueueResult] = []
        for keyed, run in groupby(requests, _has_key):
            if keyed:
                results += [self._insert(tx, request) for request in run]
            else:
                rows = tx.insert([_job_values(tx, request) for request in run])
                results += [EnqueueResult(job_record(row), created=True) for row in rows]
        return results

    @contextmanager
    def _caller_transaction(self, conn: sqlite3.Connection) -> Iterator[Writes]:
        """One call on the caller's connection: in its transaction, never committed here.

        The connection must be to this store's file.  Without a transaction
        open, one is begun (``BEGIN IMMEDIATE``) for the caller to commit or
        roll back; the call's writes are under a savepoint, so a call that
        fails leaves the caller's transaction as it was.  A caller's deferred
        transaction that has only read may be refused by SQLite ("database is
        locked") when another process wrote meanwhile: begin it with
        ``BEGIN IMMEDIATE``.  Workers notice the jobs when the caller commits.
        """
        if not isinstance(conn, sqlite3.Connection):
            raise InvalidRequest(
                f"transactional enqueue needs a sqlite3 connection, not {type(conn).__name__}"
            )
        factory = conn.row_factory
        try:
            conn.row_factory = sqlite3.Row
            self._check_same_file(conn)
            sqlite_schema.require_current(conn, self.path)
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            conn.execute("SAVEPOINT taskharbor_enqueue")
            try:
                writes = Writes(conn, self.clock.now())
                yield writes
                writes.settle_callbacks()
            except BaseException:
                conn.execute("ROLLBACK TO taskharbor_enqueue")
                raise
            finally:
                conn.execute("RELEASE taskharbor_enqueue")
        except sqlite3.Error as exc:
            error = sqlite_schema.storage_error(self.path, exc, BUSY_TIMEOUT_SECONDS)
            if error is None:
                raise
            raise error from exc
        finally:
            conn.row_factory = factory

    def _check_same_file(self, conn: sqlite3.Connection) -> None:
        main = next(row for row in conn.execute("PRAGMA database_list") if row[1] == "main")
        if not main[2] or os.path.realpath(main[2]) != os.path.realpath(self.path):
            raise InvalidRequest(
                f"the connection is to {main[2] or 'an in-memory database'!r}, not to this "
                f"store's file {str(self.path)!r}"
            )

    def _insert(
        self,
        tx: Writes,
        request: EnqueueRequest,
        *,
        workflow_id: WorkflowId | None = None,
        depends_on: tuple[JobId, ...] = (),
        step_input: object = None,
    ) -> EnqueueResult:
        """Event ``enqueue`` for one request; a job holding its idempotency key wins.

        The key is looked up before inserting so that a hit does not use up a job
        id (ids stay gapless, as in the reference model).  Inside the call's
        ``BEGIN IMMEDIATE`` no other writer runs between lookup and insert, and
        the UNIQUE index on the key refuses a duplicate whatever happens.  The
        lookup finds the key's last taker; one whose scope has ended gives the
        key up (it moves to ``given_up_key``) to the new job.
        """
        if request.idempotency_key is not None:
            taker = tx.conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?",
                (request.idempotency_key,),
            ).fetchone()
            if taker is not None:
                holder = job_record(taker)
                if holds_key(holder.key_scope, holder.state, holder.created_at, tx.now):
                    return EnqueueResult(holder, created=False)
                tx.conn.execute(GIVE_UP_KEY, (holder.id,))
        values = _job_values(
            tx, request, workflow_id=workflow_id, depends_on=depends_on, step_input=step_input
        )
        [row] = tx.insert([values])
        return EnqueueResult(job_record(row), created=True)

    def enqueue_workflow(self, graph: WorkflowGraph) -> WorkflowRecord:
        if not isinstance(graph, WorkflowGraph):
            raise InvalidRequest(f"enqueue_workflow needs a WorkflowGraph, not {graph!r}")
        with self._transaction() as tx:
            return self._store_workflow(tx, graph)

    def enqueue_workflow_in(self, conn: sqlite3.Connection, graph: WorkflowGraph) -> WorkflowRecord:
        """:meth:`enqueue_workflow` on the caller's connection, inside its transaction."""
        if not isinstance(graph, WorkflowGraph):
            raise InvalidRequest(f"enqueue_workflow_in needs a WorkflowGraph, not {graph!r}")
        with self._caller_transaction(conn) as tx:
            return self._store_workflow(tx, graph)

    def _store_workflow(self, tx: Writes, graph: WorkflowGraph) -> WorkflowRecord:
        if graph.idempotency_key is not None:
            holder = tx.conn.execute(
                "SELECT id FROM workflows WHERE idempotency_key = ?", (graph.idempotency_key,)
            ).fetchone()
            if holder is not None:
                return self._workflow(tx, holder["id"])
        workflow_id = tx.conn.execute(
            "INSERT INTO workflows (name, state, result, created_at, idempotency_key) "
            "VALUES (?, ?, ?, ?, ?) RETURNING id",
            (
                graph.name,
                WorkflowState.RUNNING.value,
                dump_json(None),
                tx.now_us,
                graph.idempotency_key,
            ),
        ).fetchone()["id"]
        ids: list[JobId] = []
        for step in graph.steps:
            index_to_id = dict(enumerate(ids))
            result = self._insert(
                tx,
                step.request,
                workflow_id=workflow_id,
                depends_on=tuple(ids[index] for index in step.after),
                step_input=None if step.input is None else map_ref(step.input, index_to_id),
            )
            ids.append(result.job.id)
        result_ref = map_ref(graph.result, dict(enumerate(ids)))
        partial = [ids[index] for index, step in enumerate(graph.steps) if step.partial]
        if partial:
            tolerated = [ids[index] for index in sorted(tolerated_steps(graph.steps))]
            tx.conn.execute(
                "UPDATE workflows SET partial = ?, tolerated = ? WHERE id = ?",
                (dump_json(partial), dump_json(tolerated), workflow_id),
            )
        callback = None
        if graph.on_failure is not None:
            values = _job_values(tx, graph.on_failure, workflow_id=workflow_id, waits=True)
            [callback_row] = tx.insert([values])
            callback = callback_row["id"]
        tx.conn.execute(
            "UPDATE workflows SET result = ?, on_failure = ? WHERE id = ?",
            (dump_json(result_ref), callback, workflow_id),
        )
        return self._workflow(tx, workflow_id)

    # -- consuming ------------------------------------------------------------------

    def lease(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker_id: str,
    ) -> list[JobRecord]:
        args = check_lease_args(queues, limit, lease_seconds, worker_id)
        target = JobState(JOB.resolve(JobEvent.LEASE, JobState.AVAILABLE))
        with self._transaction(durable=False) as tx:
            queue_params = _queue_params(leased_queues(tx, args.queues))
            if not queue_params:
                return []
            expires = to_micros(tx.now + timedelta(seconds=args.lease_seconds))
            ready = self._ready(tx, queue_params, args.limit)
            if not ready:
                return []
            rows = tx.conn.execute(
                LEASE_JOBS,
                {
                    "target": target.value,
                    "expires": expires,
                    "worker": args.worker_id,
                    "ids": dump_json(ready),
                    "tokens": secrets.token_hex(TOKEN_CHARS // 2 * len(ready)),
                },
            ).fetchall()
        leased, corrupt = split_leased(rows, job_record)
        if corrupt:
            self.fail(corrupt)
        position = {job_id: index for index, job_id in enumerate(ready)}
        return sorted(leased, key=lambda job: position[job.id])

    def _ready(self, tx: Writes, queue_params: dict[str, str], limit: int) -> list[JobId]:
        """The ids to lease, in lease order: candidates without flow limits, and those
        the flow gate admits, found by the group walk (:mod:`.walk`)."""
        gate = FlowGate(SQLiteFlowCounts(tx.conn), tx.now)
        chosen = walk(tx.conn, gate, queue_params, limit)
        if gate.starts:
            record_starts(tx.conn, gate.starts)
        return chosen

    def heartbeat(self, leases: Sequence[LeaseRef], lease_seconds: float) -> HeartbeatResult:
        check_batch(leases, LeaseRef, "heartbeat")
        seconds = check_lease_seconds(lease_seconds)
        cancel_requested: set[JobId] = set()
        with self._transaction(durable=False) as tx:
            expires = to_micros(tx.now + timedelta(seconds=seconds))
            lost, live = _fence(tx, leases)
            for ref, row in live:
                if ref.progress is None:
                    tx.move(row, JobEvent.HEARTBEAT, lease_expires_at=expires)
                else:
                    progress = dump_json(progress_to_json(ref.progress))
                    tx.move(row, JobEvent.HEARTBEAT, lease_expires_at=expires, progress=progress)
                if row["cancel_requested"]:
                    cancel_requested.add(row["id"])
            mark_seen(tx, {row["leased_by"] for _, row in live})
        return HeartbeatResult(tuple(lost), frozenset(cancel_requested))

    def complete(self, completions: Sequence[Completion]) -> list[LeaseLost]:
        """Event ``succeed`` for every live lease, in one statement; the others are lost.

        Applying the event before reading the refused items changes nothing
        they see (only live leases are written), and an unknown id still
        raises before anything commits.  Workflow effects follow in request
        order, once every report is written.
        """
        check_batch(completions, Completion, "complete")
        items = dump_json(
            [[item.job_id, item.token, dump_json(item.result)] for item in completions]
        )
        params = {
            **_SUCCEED_PARAMS,
            **_LEAVING_RUNNING_PARAMS,
            "running": JobState.RUNNING.value,
            "items": items,
        }
        with self._transaction(durable=False) as tx:
            done = {row[0]: row for row in tx.conn.execute(_COMPLETE, {**params, "now": tx.now_us})}
            lost = _stale(tx, [item for item in completions if item.job_id not in done])
            for item in completions:
                row = done.get(item.job_id)
                if row is not None and row["workflow_id"] is not None:
                    tx.after_step_finished(row["id"], JobState(row["state"]), row["workflow_id"])
            return lost

    def fail(self, failures: Sequence[Failure]) -> list[LeaseLost]:
        check_batch(failures, Failure, "fail")
        with self._transaction(durable=False) as tx:
            lost, live = _fence(tx, failures)
            for item, row in live:
                facts = {
                    "cancel_requested": bool(row["cancel_requested"]),
                    "permanent": item.permanent,
                    "attempts_exhausted": row["attempt"] >= row["max_attempts"],
                }
                target = tx.resolve(row, JobEvent.FAIL, facts)
                entry = error_entry(row["attempt"], tx.now, item.error)
                errors = dump_json([*load_json(row["errors"]), entry])
                if target == JobState.RETRYING:
                    retry_at = tx.now_us if item.retry_at is None else to_micros(item.retry_at)
                    tx.apply(row, target, errors=errors, run_at=retry_at)
                else:
                    tx.apply(row, target, errors=errors)
                tx.after_step_finished(row["id"], target, row["workflow_id"])
            return lost

    def snooze(self, requests: Sequence[SnoozeRequest]) -> list[LeaseLost]:
        check_batch(requests, SnoozeRequest, "snooze")
        with self._transaction(durable=False) as tx:
            lost, live = _fence(tx, requests)
            for item, row in live:
                facts = {"cancel_requested": bool(row["cancel_requested"])}
                target = tx.resolve(row, JobEvent.SNOOZE, facts)
                if target == JobState.SCHEDULED:
                    tx.apply(row, target, attempt=row["attempt"] - 1, run_at=to_micros(item.run_at))
                else:
                    tx.apply(row, target, attempt=row["attempt"] - 1)
                tx.after_step_finished(row["id"], target, row["workflow_id"])
            return lost

    # -- operators --------------------------------------------------------------------

    def cancel(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        ids = job_ids(job_ids_, "cancel")
        with self._transaction() as tx:
            for row in tx.rows(ids):
                if row["id"] in tx.touched:
                    continue  # cancelled already by an earlier item's workflow cascade
                if row["state"] == JobState.RUNNING:
                    tx.request_cancel(row["id"])
                    continue
                state = tx.move(row, JobEvent.CANCEL, reason=CANCELLED_BY_REQUEST)
                tx.after_step_finished(row["id"], state, row["workflow_id"])
            return [job_record(row) for row in tx.rows(ids)]

    def requeue(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        ids = job_ids(job_ids_, "requeue")
        with self._transaction() as tx:
            for row in tx.rows(ids):
                if row["id"] in tx.touched:
                    continue  # requeued already with an earlier item's workflow
                workflow_id = row["workflow_id"]
                if workflow_id is None or tx.succeeded(workflow_id):
                    tx.requeue(row)  # alone (a tolerated step of a workflow that succeeded)
                    continue
                # The items of this workflow and its cancelled steps, in id order: a step
                # comes after those it depends on, so a partial step waits for every
                # dependency that this call brings back.
                items = [job_id for job_id in ids if job_id not in tx.touched]
                steps = tx.conn.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE workflow_id = ? "
                    "AND (state = ? OR id IN (SELECT value FROM json_each(?))) ORDER BY id",
                    (workflow_id, JobState.CANCELLED.value, json.dumps(items)),
                ).fetchall()
                for step in steps:
                    tx.requeue(step)
                tx.derive_workflow(workflow_id)
            return [job_record(row) for row in tx.rows(ids)]

    # -- maintenance --------------------------------------------------------------------

    def promote(self) -> PromoteResult:
        with self._transaction(durable=False) as tx:
            promoted = tx.conn.execute(_PROMOTE, {**_PROMOTE_PARAMS, "now": tx.now_us}).rowcount
            next_due = tx.conn.execute(_NEXT_DUE).fetchone()[0]
        return PromoteResult(promoted, None if next_due is None else from_micros(next_due))

    def rescue(self) -> list[JobId]:
        params: dict[str, object] = {
            **_RESCUE_PARAMS,
            **_LEAVING_RUNNING_PARAMS,
            "error_type": LEASE_EXPIRED_TYPE,
            "error_message": LEASE_EXPIRED_MESSAGE,
            "retrying": JobState.RETRYING.value,
        }
        with self._transaction(durable=False) as tx:
            expired = tx.conn.execute(_EXPIRED, {"now": tx.now_us}).fetchall()
            if not expired:
                return []
            retry_at = {
                str(job_id): to_micros(
                    tx.now + retry_delay(rescue_policy(job_id, retry), job_id, attempt)
                )
                for job_id, attempt, retry in expired
            }
            values = {
                "ids": dump_json([row[0] for row in expired]),
                "retry_at": dump_json(retry_at),
            }
            rescued = tx.conn.execute(_RESCUE, {**params, **values, "now": tx.now_us}).fetchall()
            rescued.sort(key=lambda row: row["id"])
            for row in rescued:
                tx.after_step_finished(row["id"], JobState(row["state"]), row["workflow_id"])
            return [row["id"] for row in rescued]

    def prune(
        self,
        finished_before: datetime,
        states: Collection[JobState] = PRUNED_BY_DEFAULT,
        *,
        dry_run: bool = False,
    ) -> int:
        check_aware(finished_before, "finished_before")
        pruned = sorted(state.value for state in check_prune_states(states))
        params = {"horizon": to_micros(finished_before), "states": dump_json(pruned)}
        if dry_run:
            with self._transaction(write=False) as tx:
                return int(tx.conn.execute(_COUNT_PRUNABLE, params).fetchone()[0])
        with self._transaction(durable=False) as tx:
            deleted = tx.conn.execute(_PRUNE_JOBS, params).rowcount
            deleted += tx.conn.execute(_PRUNE_STEPS, params).rowcount
            tx.conn.execute(_PRUNE_WORKFLOWS)
            return deleted

    # -- reading ----------------------------------------------------------------------

    def get(self, job_ids_: Sequence[JobId]) -> list[JobRecord]:
        ids = job_ids(job_ids_, "get", distinct=False)
        with self._transaction(write=False) as tx:
            return [job_record(row) for row in tx.rows(ids)]

    def list_jobs(self, where: JobFilter) -> list[JobRecord]:
        if not isinstance(where, JobFilter):
            raise InvalidRequest(f"list_jobs needs a JobFilter, not {where!r}")
        clause, params = _filter_sql(where)
        order = "DESC" if where.newest_first else "ASC"
        with self._transaction(write=False) as tx:
            rows = tx.conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE {clause} ORDER BY id {order} LIMIT ?",
                (*params, where.limit),
            ).fetchall()
        return [job_record(row) for row in rows]

    def count(self) -> Mapping[tuple[str, JobState], int]:
        with self._transaction(write=False) as tx:
            rows = tx.conn.execute(
                "SELECT queue, state, COUNT(*) AS n, MIN(id) AS first FROM jobs"
                " GROUP BY queue, state"
            ).fetchall()
        return {(row["queue"], _counted_state(row)): row["n"] for row in rows}

    def finished_per_minute(
        self, since: datetime, *, queue: str | None = None
    ) -> list[FinishedCount]:
        """One range of the index ``jobs_finished_counts`` (finished_at, queue, state),
        grouped: SQLite reads no row of the table."""
        check_history_queue(queue)
        with self._transaction(write=False) as tx:
            start = to_micros(check_history_since(since, tx.now))
            query = _FINISHED_PER_MINUTE if queue is None else _FINISHED_PER_MINUTE_OF_QUEUE
            rows = tx.conn.execute(query, {"since": start, "queue": queue}).fetchall()
        return [
            FinishedCount(from_micros(row[0]), row[1], JobState(row[2]), row[3]) for row in rows
        ]

    def get_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        check_workflow_id(workflow_id)
        with self._transaction(write=False) as tx:
            return self._workflow(tx, workflow_id)

    def list_workflows(self, where: WorkflowFilter) -> list[WorkflowRecord]:
        if not isinstance(where, WorkflowFilter):
            raise InvalidRequest(f"list_workflows needs a WorkflowFilter, not {where!r}")
        conditions, params = _states_sql(where.states)
        for condition, value in (
            ("name = ?", where.name),
            ("id > ?", _bound(where.after_id)),
            ("id < ?", _bound(where.before_id)),
        ):
            if value is not None:
                conditions.append(condition)
                params.append(value)
        clause = " AND ".join(conditions) or "1"
        order = "DESC" if where.newest_first else "ASC"
        with self._transaction(write=False) as tx:
            rows = tx.conn.execute(
                f"SELECT * FROM workflows WHERE {clause} ORDER BY id {order} LIMIT ?",
                (*params, where.limit),
            ).fetchall()
            steps: dict[int, list[int]] = {row["id"]: [] for row in rows}
            callbacks = {row["on_failure"] for row in rows}
            if steps:
                marks = ", ".join("?" * len(steps))
                for step in tx.conn.execute(
                    f"SELECT id, workflow_id FROM jobs WHERE workflow_id IN ({marks}) ORDER BY id",
                    tuple(steps),
                ):
                    if step["id"] not in callbacks:
                        steps[step["workflow_id"]].append(step["id"])
        return [workflow_record(row, tuple(steps[row["id"]])) for row in rows]

    def cancel_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        check_workflow_id(workflow_id)
        with self._transaction() as tx:
            workflow = self._workflow(tx, workflow_id)
            if workflow.state in WORKFLOW.final_states:
                raise InvalidTransition.workflow_finished(workflow_id, workflow.state)
            callback = () if workflow.on_failure is None else (workflow.on_failure,)
            for step in tx.rows((*workflow.steps, *callback)):
                if step["state"] == JobState.RUNNING:
                    tx.request_cancel(step["id"], reason=WORKFLOW_CANCELLED)
                elif step["state"] in QUEUED_JOB_STATES:
                    tx.move(step, JobEvent.CANCEL, reason=WORKFLOW_CANCELLED)
            tx.derive_workflow(workflow_id)
            return self._workflow(tx, workflow_id)

    # -- waiting ------------------------------------------------------------------------

    def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Wait until a job of ``queues`` is available, or any waiting job is due, or
        ``timeout`` passes.

        SQLite has no notifications, so the file is watched: ``PRAGMA data_version``
        (no table read) every :data:`CHANGE_POLL_SECONDS` tells when another
        connection (thread or process) committed, and only then, or every
        :data:`WAIT_POLL_SECONDS` for jobs that fall due, are the two index
        lookups made.
        """
        wanted = check_queues(queues, "wait_for_jobs")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or math.isnan(timeout):
            raise InvalidRequest(f"wait_for_jobs: timeout must be seconds, not {timeout!r}")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            version = self._data_version()
            if self._anything_ready(wanted):
                return
            next_look = min(deadline, time.monotonic() + WAIT_POLL_SECONDS)
            while (left := next_look - time.monotonic()) > 0:
                time.sleep(min(CHANGE_POLL_SECONDS, left))
                if self._data_version() != version:
                    break
            if time.monotonic() >= deadline:
                return

    def _data_version(self) -> int:
        """A number that changes whenever another connection commits to the file."""
        with self._using() as conn:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def _anything_ready(self, queues: tuple[str, ...]) -> bool:
        """A job of the queues that are not paused is available, or a waiting job is due."""
        with self._transaction(write=False) as tx:
            queue_params = _queue_params(leased_queues(tx, queues))
            query = ready_jobs_query(len(queue_params))
            if queue_params and tx.conn.execute(query, queue_params).fetchone():
                return True
            next_due = tx.conn.execute(_NEXT_DUE).fetchone()[0]
            return next_due is not None and next_due <= tx.now_us

    def _workflow(self, tx: Writes, workflow_id: WorkflowId) -> WorkflowRecord:
        if abs(workflow_id) > INTEGER_MAX:  # cannot be bound; no workflow has it
            raise WorkflowNotFound(workflow_id)
        row = tx.conn.execute("SELECT * FROM workflows WHERE id = ?", (workflow_id,)).fetchone()
        if row is None:
            raise WorkflowNotFound(workflow_id)
        steps = tx.conn.execute(
            "SELECT id FROM jobs WHERE workflow_id = ? AND id IS NOT ? ORDER BY id",
            (workflow_id, row["on_failure"]),
        ).fetchall()
        return workflow_record(row, tuple(step["id"] for step in steps))


def _queue_params(queues: tuple[str, ...]) -> dict[str, str]:
    """Validated queue names as the ``:q0, :q1, ...`` parameters of :func:`ready_jobs_query`."""
    return {f"q{index}": queue for index, queue in enumerate(queues)}


def _has_key(request: EnqueueRequest) -> bool:
    """Whether enqueueing the request must look its idempotency key up first."""
    return request.idempotency_key is not None


@cache
def _enqueue_target(waits_on_dependencies: bool, run_at_in_future: bool) -> JobState:
    """Event ``enqueue``'s target for these facts (the table is fixed: resolved once each)."""
    facts = {"waits_on_dependencies": waits_on_dependencies, "run_at_in_future": run_at_in_future}
    return JobState(JOB.resolve(JobEvent.ENQUEUE, NEW, facts))


def _job_values(
    tx: Writes,
    request: EnqueueRequest,
    *,
    workflow_id: WorkflowId | None = None,
    depends_on: tuple[JobId, ...] = (),
    step_input: object = None,
    waits: bool = False,
) -> tuple[object, ...]:
    """The new job's column values, in the order of ``INSERT_COLUMNS`` (``waits``: a
    failure callback, which waits whatever its dependencies)."""
    run_at = tx.now_us if request.run_at is None else to_micros(request.run_at)
    state = _enqueue_target(waits or bool(depends_on), run_at > tx.now_us)
    args = dump_json(list(request.args)) if request.args else "[]"
    return (
        request.task,
        request.queue,
        state.value,
        args,
        dump_json(dict(request.kwargs)) if request.kwargs else "{}",
        request.priority,
        run_at,
        0,
        request.max_attempts,
        tx.now_us,
        request.idempotency_key,
        workflow_id,
        dump_json(list(depends_on)) if depends_on else "[]",
        None if workflow_id is None else args,
        None if step_input is None else dump_json(step_input),
        policy_text(request.retry),
        *_flow_values(request.flow),
        None if request.flow is None else tx.flow_group(request.task, flow_text(request.flow)),
        dump_json(dict(request.headers)) if request.headers else "{}",
        dump_json(list(request.tags)) if request.tags else "[]",
        dump_json(dict(request.meta)) if request.meta else "{}",
        scope_text(request.key_scope),
    )


def _flow_values(limits: FlowLimits | None) -> tuple[str | None, str | None, str | None]:
    """The ``flow``, ``flow_key`` and ``flow_sequence`` columns of a new job."""
    if limits is None:
        return None, None, None
    sequence = None if limits.sequence is None else limits.sequence.value
    return flow_text(limits), limits.key, sequence


def _live(row: sqlite3.Row, token: str) -> bool:
    """A lease is live while the job is running under that token (expired or not)."""
    return bool(row["state"] == JobState.RUNNING and row["lease_token"] == token)


_Fenced = TypeVar("_Fenced", LeaseRef, Completion, Failure, SnoozeRequest)


def _existing_file_uri(path: Path) -> str:
    """An SQLite URI that opens ``path`` read-write and never creates it."""
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=rw"


def _fence(
    tx: Writes, items: Sequence[_Fenced]
) -> tuple[list[LeaseLost], list[tuple[_Fenced, sqlite3.Row]]]:
    """Split fenced items into refused ones (reported) and live ones with their rows.

    The rows are read once, before anything is applied: each item's event is
    resolved on its job as it was when the call began.
    """
    lost: list[LeaseLost] = []
    live: list[tuple[_Fenced, sqlite3.Row]] = []
    rows = tx.rows_by_id(item.job_id for item in items)
    for item in items:
        row = rows.get(item.job_id)
        if row is not None and _live(row, item.token):
            live.append((item, row))
        else:
            lost.append(_refusal(row, item))
    return lost, live


def _stale(tx: Writes, items: Sequence[_Fenced]) -> list[LeaseLost]:
    """``LeaseLost`` for each of these items, in order: their leases are not live."""
    rows = tx.rows_by_id(item.job_id for item in items) if items else {}
    return [_refusal(rows.get(item.job_id), item) for item in items]


def _refusal(row: sqlite3.Row | None, item: _Fenced) -> LeaseLost:
    """The report of a refused fenced item; ``row`` is None when the job is not stored
    (pruned while its worker held it: a lost lease for that item only)."""
    if row is None:
        return LeaseLost.missing(item.job_id, item.token)
    return LeaseLost.stale(row["id"], item.token, JobState(row["state"]))


def _filter_sql(where: JobFilter) -> tuple[str, list[object]]:
    """The ``WHERE`` clause of ``list_jobs`` for ``where``, with its parameters.

    The text holds only column names and ``?``; every value is a parameter.
    ``workflow_id`` has an index and ``tag`` reads the tag's own rows of
    ``job_tags``; otherwise SQLite walks the table in id order (``ORDER BY
    id``), testing each row, until it has ``LIMIT`` rows.
    """
    conditions, params = _states_sql(where.states)
    since = None if where.created_since is None else to_micros(where.created_since)
    for condition, value in (
        ("task = ?", where.task),
        ("queue = ?", where.queue),
        ("workflow_id = ?", where.workflow_id),
        ("id > ?", _bound(where.after_id)),
        ("id < ?", _bound(where.before_id)),
        ("created_at >= ?", since),
        ("id IN (SELECT job_id FROM job_tags WHERE tag = ?)", where.tag),
    ):
        if value is not None:
            conditions.append(condition)
            params.append(value)
    return " AND ".join(conditions) or "1", params


def _states_sql(states: Iterable[str] | None) -> tuple[list[str], list[object]]:
    """The ``state IN (...)`` condition of a filter's states (none when not given)."""
    if states is None:
        return [], []
    params: list[object] = [*sorted(str(state) for state in states)]
    return [f"state IN ({', '.join('?' * len(params))})"], params


def _bound(job_id: int | None) -> int | None:
    """An id bound of a filter as SQLite can bind it: ids are positive and below
    ``INTEGER_MAX``, so a bound beyond either end selects as that end does."""
    return None if job_id is None else max(-1, min(job_id, INTEGER_MAX))


def _counted_state(row: sqlite3.Row) -> JobState:
    """The state of a ``count`` group; :class:`CorruptJob` naming its first job when the
    rows hold a state no driver writes (edited by hand past the CHECK constraint)."""
    try:
        return JobState(row["state"])
    except ValueError:
        raise CorruptJob(
            row["first"], f"unknown state {row['state']!r} ({row['n']} jobs are in it)"
        ) from None
