"""The Redis driver: the contract on a store that is not SQL.

Every SPI call is one run of the store's Lua library (:mod:`.library`), so
each call is atomic on the server with no ``WATCH`` and no retries; the state
changes in it are the spec's table and field effects compiled into Lua
(:mod:`.transitions`).  Python validates each call before it is sent, draws
the lease tokens, and computes rescued jobs' retry delays with the spec's own
function.  "Now" is the server's ``TIME`` unless a clock is injected (tests).
Idle workers wait on pub/sub (:mod:`.notify`), woken by the script that made a
job available.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import redis

from taskharbor.drivers.corrupt_rows import progress_to_json, split_leased
from taskharbor.spec import StoreError
from taskharbor.spec.clock import Clock
from taskharbor.spec.errors import (
    InvalidRequest,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    WorkflowNotFound,
)
from taskharbor.spec.history import (
    FinishedCount,
    check_history_queue,
    check_history_since,
    ordered_counts,
)
from taskharbor.spec.records import (
    PRUNED_BY_DEFAULT,
    Completion,
    EnqueueRequest,
    EnqueueResult,
    Failure,
    HeartbeatResult,
    JobFilter,
    JobId,
    JobRecord,
    LeaseRef,
    PromoteResult,
    SnoozeRequest,
    WorkflowFilter,
    WorkflowGraph,
    WorkflowId,
    WorkflowRecord,
    check_aware,
    check_batch,
    check_lease_args,
    check_lease_seconds,
    check_prune_states,
    check_queues,
    check_workflow_id,
    job_ids,
    tolerated_steps,
    wait_timeout,
)
from taskharbor.spec.records import job_ids as check_job_ids
from taskharbor.spec.retry import policy_from_text, retry_delay
from taskharbor.spec.schedules import ScheduleNotFound
from taskharbor.spec.spi import Capabilities, Driver
from taskharbor.spec.table import JOB, JobEvent, JobState

from .connect import DEFAULT_PREFIX, Durability, ServerClock, key_prefix, read_durability
from .library import build_library, error_fragment
from .notify import Listener
from .queues import QUEUES_LUA, RedisQueues
from .rows import (
    as_dict,
    decode_job,
    decode_time,
    decode_workflow,
    encode_json,
    encode_time,
    micros,
    ref_template,
    request_fields,
)
from .schedules import SCHEDULES_LUA, RedisSchedules, ScheduleConflict
from .workers import WORKERS_LUA, RedisWorkers

logger = logging.getLogger("taskharbor")

BATCH = 500
"""Jobs per script run of promote, rescue and prune: a large backlog never blocks the
server for long (each run is atomic; the call loops until the work is done)."""

SCHEMA_VERSION = "4"
"""1: the first store; 2: flow control (the running counts its guards read, which a store
of version 1 gets from its running jobs when it is migrated); 3: finished jobs counted per
minute (``finished_per_minute``; an older store's are counted once when it is migrated);
4: limited available jobs kept in per-group sets, each group one entry of its queue's
ready set (the group walk of a lease; an older store's are moved once when it is
migrated)."""

CAPABILITIES = Capabilities(
    multi_process=True,
    notifications=True,
    schedules=True,
    failure_callbacks=True,
    workflow_idempotency=True,
    queue_pause=True,
    flow_control=True,
    workers=True,
    job_metadata=True,
    key_scopes=True,
    partial_chords=True,
    finished_counts=True,
)
"""What every Redis store declares; ``persistent`` depends on the server (:meth:`migrate`)."""

_LIBRARY = build_library(SCHEDULES_LUA + QUEUES_LUA + WORKERS_LUA)


class RedisDriver(RedisSchedules, RedisQueues, RedisWorkers, Driver):
    """Jobs and workflows in one Redis database, under one key prefix.

    ``url`` is a ``redis://`` or ``rediss://`` URL (the ``?prefix=`` parameter
    is read by :func:`taskharbor.drivers.redis.open_store`, not here).
    ``persistent`` declares the capability; by default :meth:`migrate` reads it
    from the server's settings (AOF with ``appendfsync always``).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock | None = None,
        persistent: bool | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.prefix = key_prefix(prefix)
        self._client = redis.Redis.from_url(url, decode_responses=True)
        self._injected = clock is not None
        self.clock = clock if clock is not None else ServerClock(self._client)
        self._persistent = persistent
        self.capabilities = replace(CAPABILITIES, persistent=bool(persistent))
        self._script = self._client.register_script(_LIBRARY)
        self._token_prefix = secrets.token_hex(12)
        self._tokens = itertools.count(1)
        self._token_lock = threading.Lock()
        self._listener = Listener(self._client, self.prefix + "wake", self.prefix + "done")
        self._poll_interval = poll_interval
        self.durability: Durability | None = None

    # -- the store ------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the store to this version, and read what durability the server gives."""
        try:
            self._call("migrate", SCHEMA_VERSION)
            self.durability = read_durability(self._client)
        except redis.RedisError as exc:
            raise self._store_error(exc) from exc
        if self.durability is None:
            logger.warning(
                "Redis store %s: the server refuses CONFIG, so its durability is unknown",
                self.prefix,
            )
        elif self.durability.persistent:
            logger.info("Redis store %s: %s", self.prefix, self.durability.describe())
        else:
            logger.warning("Redis store %s: %s", self.prefix, self.durability.describe())
        if self._persistent is None:
            persistent = self.durability is not None and self.durability.persistent
            self.capabilities = replace(CAPABILITIES, persistent=persistent)

    def close(self) -> None:
        self._listener.close()
        self._client.close()

    def _store_error(self, exc: Exception) -> StoreError:
        kwargs = self._client.connection_pool.connection_kwargs
        where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        return StoreError(f"Redis at {where}: {type(exc).__name__}: {exc}")

    def _call(self, command: str, *args: Any, now: str | None = None) -> Any:
        """One atomic run of the library; the call's now is ``now`` when given (a time
        an earlier run read), else the injected clock's or the server's.  Refusals
        come back as ``["!", kind, ...]``."""
        if now is None:
            now = encode_time(self.clock.now()) if self._injected else ""
        try:
            reply = self._script(keys=[self.prefix], args=[command, now, *args])
        except redis.RedisError as exc:
            raise self._store_error(exc) from exc
        if isinstance(reply, list) and reply and reply[0] == "!":
            raise _refusal(reply)
        return reply

    def _new_tokens(self, count: int) -> list[str]:
        with self._token_lock:
            return [f"{self._token_prefix}{next(self._tokens):x}" for _ in range(count)]

    # -- producing ----------------------------------------------------------

    def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[EnqueueResult]:
        check_batch(requests, EnqueueRequest, "enqueue")
        args = [field for request in requests for field in _checked_request(request)]
        reply = self._call("enqueue", *args)
        return [EnqueueResult(decode_job(as_dict(flat)), bool(created)) for created, flat in reply]

    def enqueue_workflow(self, graph: WorkflowGraph) -> WorkflowRecord:
        if not isinstance(graph, WorkflowGraph):
            raise InvalidRequest(f"enqueue_workflow expects a WorkflowGraph, not {graph!r}")
        args = [
            graph.name or "",
            ref_template(graph.result),
            graph.idempotency_key or "",
            str(len(graph.steps)),
        ]
        tolerated = tolerated_steps(graph.steps)
        for index, step in enumerate(graph.steps):
            args += _checked_request(step.request)
            args.append(",".join(str(index) for index in step.after))
            args.append("" if step.input is None else ref_template(step.input))
            args.append(("p" if step.partial else "") + ("t" if index in tolerated else ""))
        if graph.on_failure is not None:
            args += _checked_request(graph.on_failure)
        return decode_workflow(as_dict(self._call("enqueue_workflow", *args)))

    # -- consuming ----------------------------------------------------------

    def lease(
        self,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker_id: str,
    ) -> list[JobRecord]:
        checked = check_lease_args(queues, limit, lease_seconds, worker_id)
        names = list(dict.fromkeys(checked.queues))
        reply = self._call(
            "lease",
            str(micros(checked.lease_seconds)),
            checked.worker_id,
            str(checked.limit),
            str(len(names)),
            *names,
            *self._new_tokens(checked.limit),
        )
        records, corrupt = split_leased([_leased_row(flat) for flat in reply], decode_job)
        if corrupt:
            self.fail(corrupt)
        return records

    def heartbeat(self, leases: Sequence[LeaseRef], lease_seconds: float) -> HeartbeatResult:
        check_batch(leases, LeaseRef, "heartbeat")
        seconds = check_lease_seconds(lease_seconds)
        args = [str(micros(seconds))]
        for ref in leases:
            progress = "" if ref.progress is None else encode_json(progress_to_json(ref.progress))
            args += [str(ref.job_id), ref.token, progress]
        lost, asked = self._call("heartbeat", *args)
        return HeartbeatResult(
            tuple(_lost(leases, lost)), frozenset(int(job_id) for job_id in asked)
        )

    def complete(self, completions: Sequence[Completion]) -> list[LeaseLost]:
        check_batch(completions, Completion, "complete")
        args: list[str] = []
        for item in completions:
            args += [str(item.job_id), item.token, encode_json(item.result)]
        return _lost(completions, self._call("complete", *args))

    def fail(self, failures: Sequence[Failure]) -> list[LeaseLost]:
        check_batch(failures, Failure, "fail")
        args: list[str] = []
        for item in failures:
            error = item.error
            retry_at = "" if item.retry_at is None else encode_time(item.retry_at)
            fragment = error_fragment(error.type, error.message, error.traceback)
            args += [
                str(item.job_id),
                item.token,
                fragment,
                retry_at,
                "1" if item.permanent else "0",
            ]
        return _lost(failures, self._call("fail", *args))

    def snooze(self, requests: Sequence[SnoozeRequest]) -> list[LeaseLost]:
        check_batch(requests, SnoozeRequest, "snooze")
        args: list[str] = []
        for item in requests:
            args += [str(item.job_id), item.token, _time(item.run_at, "run_at")]
        return _lost(requests, self._call("snooze", *args))

    # -- operators ------------------------------------------------------------

    def cancel(self, job_ids: Sequence[JobId]) -> list[JobRecord]:
        wanted = check_job_ids(job_ids, "cancel")
        return [decode_job(as_dict(flat)) for flat in self._call("cancel", *map(str, wanted))]

    def requeue(self, job_ids: Sequence[JobId]) -> list[JobRecord]:
        wanted = check_job_ids(job_ids, "requeue")
        return [decode_job(as_dict(flat)) for flat in self._call("requeue", *map(str, wanted))]

    def cancel_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        check_workflow_id(workflow_id)
        return decode_workflow(as_dict(self._call("cancel_workflow", str(workflow_id))))

    # -- maintenance ------------------------------------------------------------

    def promote(self) -> PromoteResult:
        promoted = 0
        while True:
            count, first = self._call("promote", str(BATCH))
            promoted += int(count)
            if int(count) < BATCH:
                return PromoteResult(promoted, decode_time(first) if first else None)

    def rescue(self) -> list[JobId]:
        rescued: list[JobId] = []
        while True:
            expired = self._call("expired", str(BATCH))
            if not expired:
                break
            args: list[str] = []
            for job_id, token, attempt, retry in sorted(expired, key=lambda row: int(row[0])):
                delay = retry_delay(policy_from_text(retry), int(job_id), int(attempt))
                args += [job_id, token, str(micros(delay.total_seconds()))]
            rescued += [int(job_id) for job_id in self._call("rescue", *args)]
            if len(expired) < BATCH:
                break
        return sorted(rescued)

    def prune(
        self,
        finished_before: datetime,
        states: Collection[JobState] = PRUNED_BY_DEFAULT,
        *,
        dry_run: bool = False,
    ) -> int:
        cutoff = _time(finished_before, "finished_before")
        pruned = ",".join(sorted(check_prune_states(states)))
        deleted = offset = 0
        while True:
            count, stay, read = self._call(
                "prune", cutoff, pruned, "1" if dry_run else "0", str(BATCH), str(offset)
            )
            deleted += int(count)
            offset += int(stay)
            if int(read) < BATCH:
                return deleted

    # -- reading --------------------------------------------------------------

    def get(self, job_ids: Sequence[JobId]) -> list[JobRecord]:
        wanted = check_job_ids(job_ids, "get", distinct=False)
        return [decode_job(as_dict(flat)) for flat in self._call("get", *map(str, wanted))]

    def list_jobs(self, where: JobFilter) -> list[JobRecord]:
        if not isinstance(where, JobFilter):
            raise InvalidRequest(f"list_jobs expects a JobFilter, not {where!r}")
        reply = self._call(
            "list_jobs",
            ",".join(sorted(where.states)) if where.states is not None else "",
            where.task or "",
            where.queue or "",
            _text(where.workflow_id),
            _text(where.after_id),
            _text(where.before_id),
            "" if where.created_since is None else encode_time(where.created_since),
            str(where.limit),
            "1" if where.newest_first else "0",
            where.tag or "",
        )
        return [decode_job(as_dict(flat)) for flat in reply]

    def count(self) -> Mapping[tuple[str, JobState], int]:
        flat = self._call("count")
        counts: dict[tuple[str, JobState], int] = {}
        for key, value in as_dict(flat).items():
            if int(value) > 0:
                queue, state = key.rsplit("\x00", 1)
                counts[(queue, JobState(state))] = int(value)
        return counts

    def finished_per_minute(
        self, since: datetime, *, queue: str | None = None
    ) -> list[FinishedCount]:
        """From the per-minute counts the library keeps (``P fin``): one hash per
        minute of the window that holds finished jobs, never a job."""
        check_history_queue(queue)
        now = self.clock.now()
        start = check_history_since(since, now)
        flat = self._call(
            "finished_per_minute", encode_time(start), queue or "", now=encode_time(now)
        )
        found = []
        for index in range(0, len(flat), 3):
            minute, field, count = flat[index : index + 3]
            if int(count) > 0:
                name, state = field.rsplit("\x00", 1)
                found.append(FinishedCount(decode_time(minute), name, JobState(state), int(count)))
        return ordered_counts(found)

    def get_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord:
        check_workflow_id(workflow_id)
        flat = self._call("get_workflow", str(workflow_id))
        if not flat:
            raise WorkflowNotFound(workflow_id)
        return decode_workflow(as_dict(flat))

    def list_workflows(self, where: WorkflowFilter) -> list[WorkflowRecord]:
        if not isinstance(where, WorkflowFilter):
            raise InvalidRequest(f"list_workflows expects a WorkflowFilter, not {where!r}")
        reply = self._call(
            "list_workflows",
            ",".join(sorted(where.states)) if where.states is not None else "",
            where.name or "",
            _text(where.after_id),
            _text(where.before_id),
            str(where.limit),
            "1" if where.newest_first else "0",
        )
        return [decode_workflow(as_dict(flat)) for flat in reply]

    # -- waiting --------------------------------------------------------------

    def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Wake on a message for ``queues``; poll while the listener is away."""
        wanted = check_queues(queues, "wait_for_jobs")
        seconds = wait_timeout(timeout, "wait_for_jobs")
        deadline = time.monotonic() + seconds
        self._listener.start(settle=min(seconds, 1.0))
        while True:
            seen = self._listener.generations(wanted) if self._listener.connected else None
            if int(self._call("ready", *wanted)) > 0:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if seen is not None:
                self._listener.wait(wanted, seen, left)
                return
            time.sleep(min(self._poll_interval, left))

    def wait_for_finished(self, job_ids_: Sequence[JobId], timeout: float) -> None:
        """Wake on a notice naming one of the jobs; poll while the listener is away."""
        ids = job_ids(job_ids_, "wait_for_finished", distinct=False)
        seconds = wait_timeout(timeout, "wait_for_finished")
        deadline = time.monotonic() + seconds
        self._listener.start(settle=min(seconds, 1.0))
        watches = self._listener.finished
        while True:
            connected = self._listener.connected
            watch = watches.watch(ids)
            try:
                if int(self._call("any_finished", *ids)) > 0:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if connected:
                    watches.sleep(watch, (), left)
                    return
            finally:
                watches.forget(watch)
            time.sleep(min(self._poll_interval, left))


def _checked_request(request: EnqueueRequest) -> list[str]:
    if request.run_at is not None:
        check_aware(request.run_at, "run_at")
    return request_fields(request)


_Fenced = Completion | Failure | SnoozeRequest | LeaseRef
"""An item of a fenced call."""


def _time(moment: datetime, what: str) -> str:
    check_aware(moment, what)
    return encode_time(moment)


def _leased_row(flat: list[str]) -> dict[str, Any]:
    """A leased job's fields, its id an int (a corrupt one becomes a ``Failure``)."""
    row: dict[str, Any] = as_dict(flat)
    row["id"] = int(row["id"])
    return row


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def _lost(items: Sequence[_Fenced], flat: list[Any]) -> list[LeaseLost]:
    """The refused items of a fenced call, in request order; ``flat`` pairs each
    refused item's position (from 1) with its job's state, empty when it is gone."""
    lost: list[LeaseLost] = []
    for position, state in zip(flat[::2], flat[1::2], strict=True):
        item = items[int(position) - 1]
        if state == "":
            lost.append(LeaseLost.missing(item.job_id, item.token))
        else:
            lost.append(LeaseLost.stale(item.job_id, item.token, JobState(state)))
    return lost


def _refusal(reply: list[Any]) -> Exception:
    kind = reply[1]
    if kind == "job_not_found":
        return JobNotFound(int(reply[2]))
    if kind == "schedule_not_found":
        return ScheduleNotFound(reply[2])
    if kind == "conflict":
        return ScheduleConflict()
    if kind == "workflow_not_found":
        return WorkflowNotFound(int(reply[2]))
    if kind == "workflow_finished":
        return InvalidTransition.workflow_finished(int(reply[2]), reply[3])
    if kind == "invalid":
        event, job_id, state = JobEvent(reply[2]), int(reply[3]), reply[4]
        return InvalidTransition("job", job_id, event, state, JOB.sources(event))
    return StoreError(f"the Redis store answered an unknown refusal {reply!r}")
