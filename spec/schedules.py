"""Periodic jobs in the contract: declared schedules, their stored cursor, and tick rules.

A :class:`Schedule` is what code declares: a job template (an
:class:`~taskharbor.spec.records.EnqueueRequest` without ``run_at`` or key)
and *when*: a cron expression in a time zone, or a whole number of seconds
(``every``).  The store keeps one :class:`ScheduleRecord` per name: the
declaration, a ``paused`` flag, the ``cursor`` (the latest tick already
handled: every tick after it is still to come) and the last job it made.

One job per (schedule name, tick instant) is the store's guarantee, by two
means that hold together in one transaction of
:meth:`~taskharbor.spec.spi.Driver.enqueue_due_ticks`: the cursor only moves
forward, past every tick the call handled, and each tick's job carries the
idempotency key :func:`tick_key` (name and instant), so a second caller that
read the cursor before the first one moved it still finds the job.

The rules are pure functions here (:func:`synced`, :func:`plan_ticks`,
:func:`resumed`) that every driver applies inside its own transaction, so
all stores decide the same ticks from the same stored state.

Ticks
-----
* ``every=N``: the instants ``k * N`` seconds after 1970-01-01 UTC (so every
  process agrees on them with no stored anchor: ``every=600`` ticks at :00,
  :10, ... of each hour).
* ``cron``: the instants the expression matches in zone ``tz``
  (``zoneinfo``), computed by the ``cronsim`` library.  Daylight saving
  time is handled as Debian's cron does: a daily 02:30 on the day the clocks
  spring forward over 02:30 runs once, at 03:00 (the first instant after the
  gap); on the day they fall back it runs once, at the first 02:30.
  Expressions that fire at least hourly (``*/30 * * * *``) follow real time:
  every matching wall-clock minute that exists runs, both copies of a
  repeated one included.

Missed ticks
------------
A due tick is *on time* when it is at most ``grace`` seconds old at the
call, *missed* when older (no worker ran at the time).  On-time ticks always
run.  Missed ones follow ``missed``: ``"latest"`` (default) runs the most
recent missed tick once, unless an on-time tick runs in the same call (the
missed runs fold into it); ``"none"`` runs none of them; ``"all"`` runs
every one.  In every case at most ``catch_up`` ticks (the most recent) run
per call, and the cursor moves past all due ticks, run or not.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidRequest, TaskHarborError
from .flow import flow_from_text, flow_text
from .records import EnqueueRequest, JobId, JobRecord, check_name, distinct_names

if TYPE_CHECKING:
    from cronsim import CronSim

MissedPolicy = Literal["latest", "none", "all"]
"""What happens to ticks that fell while no worker ran (see "Missed ticks")."""

MISSED_POLICIES: tuple[str, ...] = get_args(MissedPolicy)

SCHEDULE_NAME_MAX_LENGTH = 200
"""A schedule's name goes into each tick's idempotency key, which must fit 255 characters."""

CATCH_UP_LIMIT = 10_000
"""The most ticks one call may run for one schedule."""

TICK_KEY_PREFIX = "th:tick:"
RUN_KEY_PREFIX = "th:run:"
"""Idempotency keys of schedule jobs: a tick's, and an operator's ``run`` now."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ScheduleNotFound(TaskHarborError, LookupError):
    """No stored schedule has this name (never synced, or dropped)."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(f"schedule {name!r} not found (never declared, or dropped)")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A schedule as code declares it; validated where it is written.

    Exactly one of ``cron`` (a 5-field cron expression, evaluated in ``tz``)
    and ``every`` (whole seconds, >= 1; ``tz`` must stay UTC) is given.
    ``grace`` (seconds): how late a tick may be and still count as on time.
    ``jitter`` (seconds): each tick's job runs up to that much after the tick,
    by an offset derived from the name and tick (the same in every process).
    ``skip_if_running``: a tick whose schedule's previous job is not finished
    yet is skipped.
    """

    name: str
    request: EnqueueRequest
    cron: str | None = None
    every: int | None = None
    tz: str = "UTC"
    missed: MissedPolicy = "latest"
    grace: float = 60.0
    catch_up: int = 100
    jitter: float = 0.0
    skip_if_running: bool = False

    def __post_init__(self) -> None:
        check_schedule_name(self.name)
        if not isinstance(self.request, EnqueueRequest):
            raise InvalidRequest(f"schedule {self.name!r}: request must be an EnqueueRequest")
        if self.request.run_at is not None or self.request.idempotency_key is not None:
            raise InvalidRequest(
                f"schedule {self.name!r}: the job template takes neither run_at nor "
                "idempotency_key (each tick sets both)"
            )
        if (self.cron is None) == (self.every is None):
            raise InvalidRequest(
                f"schedule {self.name!r}: give exactly one of cron= and every= "
                f"(got {'both' if self.cron is not None else 'neither'})"
            )
        zone(self.tz, self.name)
        if self.cron is not None:
            _cron(self.cron, self.name)
        else:
            every = self.every
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                raise InvalidRequest(
                    f"schedule {self.name!r}: every must be a whole number of seconds >= 1, "
                    f"not {every!r}"
                )
            if self.tz != "UTC":
                raise InvalidRequest(
                    f"schedule {self.name!r}: tz applies to cron schedules only "
                    "(every= ticks count seconds since 1970-01-01 UTC)"
                )
        if self.missed not in MISSED_POLICIES:
            raise InvalidRequest(
                f"schedule {self.name!r}: missed must be one of {', '.join(MISSED_POLICIES)}, "
                f"not {self.missed!r}"
            )
        _check_seconds(self.grace, "grace", self.name)
        _check_seconds(self.jitter, "jitter", self.name)
        catch_up = self.catch_up
        if isinstance(catch_up, bool) or not isinstance(catch_up, int):
            raise InvalidRequest(f"schedule {self.name!r}: catch_up must be an int")
        if not 1 <= catch_up <= CATCH_UP_LIMIT:
            raise InvalidRequest(
                f"schedule {self.name!r}: catch_up must be between 1 and {CATCH_UP_LIMIT}, "
                f"not {catch_up}"
            )
        if not isinstance(self.skip_if_running, bool):
            raise InvalidRequest(f"schedule {self.name!r}: skip_if_running must be a bool")

    @property
    def expression(self) -> str:
        """How the schedule reads to an operator: the cron expression or ``every Ns``."""
        return self.cron if self.cron is not None else f"every {self.every}s"

    def timing(self) -> tuple[str | None, int | None, str]:
        """What decides the ticks; a change of it restarts the schedule (see :func:`synced`)."""
        return self.cron, self.every, self.tz


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A stored schedule.

    ``cursor``: every tick at or before it has been handled (run or skipped);
    ``last_job_id``: the job its latest run made (tick or ``run_schedule``),
    which may have been pruned since.
    """

    schedule: Schedule
    paused: bool
    cursor: datetime
    last_job_id: JobId | None = None

    @property
    def name(self) -> str:
        return self.schedule.name

    def next_tick(self) -> datetime:
        """The first tick after the cursor."""
        return next_tick(self.schedule, self.cursor)


@dataclass(frozen=True, slots=True)
class TickResult:
    """What :meth:`~taskharbor.spec.spi.Driver.enqueue_due_ticks` did.

    ``jobs``: the jobs the call created, schedule by schedule in the order the
    names were given, each schedule's by tick (job ids increase in that order).
    ``next_tick``: the earliest next tick of the named schedules that are not
    paused (``None`` when all are), so a worker knows when to call again.
    """

    jobs: tuple[JobRecord, ...]
    next_tick: datetime | None


@dataclass(frozen=True, slots=True)
class TickPlan:
    """What one schedule does at one call: the jobs to enqueue and where the cursor goes."""

    requests: tuple[EnqueueRequest, ...]
    cursor: datetime


# -- validation ------------------------------------------------------------------


def check_schedule_name(value: object) -> str:
    """A schedule name: a name of at most :data:`SCHEDULE_NAME_MAX_LENGTH` characters."""
    check_name(value, "schedule name")
    assert isinstance(value, str)
    if len(value) > SCHEDULE_NAME_MAX_LENGTH:
        raise InvalidRequest(f"schedule name is longer than {SCHEDULE_NAME_MAX_LENGTH} characters")
    return value


def schedule_names(values: object, what: str) -> tuple[str, ...]:
    """A non-empty batch of distinct schedule names."""
    return distinct_names(values, what, "schedule name", check_schedule_name)


def check_schedules(values: object, what: str) -> tuple[Schedule, ...]:
    """A non-empty batch of :class:`Schedule` with distinct names."""
    if not isinstance(values, list | tuple) or not values:
        raise InvalidRequest(f"{what}: empty batch (give at least one schedule)")
    for value in values:
        if not isinstance(value, Schedule):
            raise InvalidRequest(f"{what}: expected Schedule, got {type(value).__name__}")
    schedule_names([value.name for value in values], what)
    return tuple(values)


def zone(name: object, schedule: str = "?") -> ZoneInfo:
    """The ``zoneinfo`` zone called ``name``; an unknown one is an ``InvalidRequest``."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"schedule {schedule!r}: tz must be a zone name, not {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidRequest(f"schedule {schedule!r}: unknown time zone {name!r}") from error


def _check_seconds(value: object, what: str, schedule: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"schedule {schedule!r}: {what} must be seconds, not {value!r}")
    if not 0 <= value <= 366 * 86400:
        raise InvalidRequest(
            f"schedule {schedule!r}: {what} must be between 0 and a year, not {value}"
        )


def _cron(expression: object, schedule: str, start: datetime | None = None) -> CronSim:
    """Parse ``expression`` with cronsim (imported here: only cron schedules need it)."""
    from cronsim import CronSim, CronSimError

    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise InvalidRequest(
            f"schedule {schedule!r}: cron must be 5 fields (minute hour day month weekday), "
            f"not {expression!r}"
        )
    try:
        return CronSim(expression, start or datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as error:
        raise InvalidRequest(
            f"schedule {schedule!r}: bad cron expression {expression!r}: {error}"
        ) from error


# -- ticks -----------------------------------------------------------------------


def next_tick(schedule: Schedule, after: datetime) -> datetime:
    """The first tick strictly after ``after`` (UTC)."""
    if schedule.every is not None:
        period = schedule.every * 1_000_000
        elapsed = _micros(after - _EPOCH)
        return _EPOCH + timedelta(microseconds=(elapsed // period + 1) * period)
    assert schedule.cron is not None
    local = after.astimezone(zone(schedule.tz, schedule.name))
    return next(_cron(schedule.cron, schedule.name, local)).astimezone(UTC)


def due_ticks(schedule: Schedule, after: datetime, now: datetime, limit: int) -> list[datetime]:
    """The most recent ``limit`` ticks in ``(after, now]``, ascending (UTC).

    Walks back from ``now``, so a cursor left long ago costs ``limit`` steps,
    not one per tick since.
    """
    found: list[datetime] = []
    if schedule.every is not None:
        period = schedule.every * 1_000_000
        tick = _EPOCH + timedelta(microseconds=_micros(now - _EPOCH) // period * period)
        while tick > after and len(found) < limit:
            found.append(tick)
            tick -= timedelta(microseconds=period)
    else:
        assert schedule.cron is not None
        # cronsim walks back from a whole second, exclusive: start one second
        # past now's second so a tick exactly at now is found.
        start = now.replace(microsecond=0) + timedelta(seconds=1)
        local = start.astimezone(zone(schedule.tz, schedule.name))
        from cronsim import CronSim

        for tick in CronSim(schedule.cron, local, reverse=True):
            moment = tick.astimezone(UTC)
            if moment <= after or len(found) >= limit:
                break
            found.append(moment)
    found.reverse()
    return found


def _micros(delta: timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of the job of ``name``'s tick at ``tick``."""
    return f"{TICK_KEY_PREFIX}{name}@{_instant(tick)}"


def run_key(name: str, now: datetime) -> str:
    """The idempotency key of an operator's run of ``name`` at ``now``."""
    return f"{RUN_KEY_PREFIX}{name}@{_instant(now)}"


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def tick_of(job: JobRecord) -> tuple[str, datetime] | None:
    """The schedule name and tick a job was made for (a run's: when it was asked), if any."""
    key = job.idempotency_key
    if key is None:
        return None
    for prefix in (TICK_KEY_PREFIX, RUN_KEY_PREFIX):
        if key.startswith(prefix):
            name, _, instant = key[len(prefix) :].rpartition("@")
            try:
                moment = datetime.strptime(instant, "%Y-%m-%dT%H:%M:%S.%fZ")
            except ValueError:
                return None
            return name, moment.replace(tzinfo=UTC)
    return None


def jitter_offset(schedule: Schedule, tick: datetime) -> timedelta:
    """How long after ``tick`` its job runs: from 0 to ``jitter``, the same in every process."""
    span = round(schedule.jitter * 1_000_000)
    if span == 0:
        return timedelta(0)
    digest = hashlib.sha256(tick_key(schedule.name, tick).encode()).digest()
    return timedelta(microseconds=int.from_bytes(digest[:8], "big") % (span + 1))


def tick_request(schedule: Schedule, tick: datetime) -> EnqueueRequest:
    """The job of one tick: the template, due at the tick (plus jitter), keyed by the tick."""
    return replace(
        schedule.request,
        run_at=tick + jitter_offset(schedule, tick),
        idempotency_key=tick_key(schedule.name, tick),
    )


def run_request(schedule: Schedule, now: datetime) -> EnqueueRequest:
    """The job of an operator's ``run``: the template, due now."""
    return replace(schedule.request, run_at=now, idempotency_key=run_key(schedule.name, now))


# -- the rules every driver applies ----------------------------------------------


def synced(stored: ScheduleRecord | None, declared: Schedule, now: datetime) -> ScheduleRecord:
    """The record after code declares ``declared`` at ``now``.

    New: not paused, cursor ``now`` (its first tick is the first after the
    declaration).  Same timing: the declaration replaces the stored one (a
    new job template, policy or jitter applies from the next tick); cursor,
    pause and last job stay.  New timing (expression, interval or zone): the
    schedule restarts from ``now``: ticks of the old timing not run yet are
    dropped, the new one's first tick is the first after ``now``.
    """
    if stored is None:
        return ScheduleRecord(declared, paused=False, cursor=now)
    cursor = stored.cursor
    if stored.schedule.timing() != declared.timing():
        cursor = max(cursor, now)
    return replace(stored, schedule=declared, cursor=cursor)


def resumed(stored: ScheduleRecord, paused: bool, now: datetime) -> ScheduleRecord:
    """The record after an operator pauses or resumes it.

    Resuming moves the cursor to ``now``: ticks that fell while paused never run.
    """
    if paused or not stored.paused:
        return replace(stored, paused=paused)
    return replace(stored, paused=False, cursor=max(stored.cursor, now))


def plan_ticks(record: ScheduleRecord, now: datetime, previous_unfinished: bool) -> TickPlan:
    """The jobs one call enqueues for ``record`` at ``now`` and the cursor after it.

    ``previous_unfinished``: the record's last job exists and is not finished
    (it matters only with ``skip_if_running``).  Paused schedules, and
    skipped ones, run nothing but their cursor still moves past every due tick.
    """
    schedule = record.schedule
    due = due_ticks(schedule, record.cursor, now, schedule.catch_up)
    if not due:
        return TickPlan((), record.cursor)
    cursor = due[-1]
    if record.paused or (schedule.skip_if_running and previous_unfinished):
        return TickPlan((), cursor)
    on_time = [tick for tick in due if (now - tick).total_seconds() <= schedule.grace]
    missed = due[: len(due) - len(on_time)]
    if schedule.missed == "all":
        chosen = due
    elif schedule.missed == "latest" and missed and not on_time:
        chosen = missed[-1:]
    else:
        chosen = on_time
    return TickPlan(tuple(tick_request(schedule, tick) for tick in chosen), cursor)


def idle(records: Sequence[ScheduleRecord], plans: Sequence[TickPlan]) -> bool:
    """Whether ``plans`` (one per record) would change nothing: a store may then skip
    its writes (and its locks) for the call."""
    return not any(
        plan.requests or plan.cursor != record.cursor
        for record, plan in zip(records, plans, strict=True)
    )


def earliest_tick(records: Sequence[ScheduleRecord]) -> datetime | None:
    """The earliest next tick of the records not paused."""
    ticks = [record.next_tick() for record in records if not record.paused]
    return min(ticks) if ticks else None


# -- storage ---------------------------------------------------------------------


def schedule_to_json(schedule: Schedule) -> str:
    """The declaration as one JSON text (how SQL stores keep it)."""
    request = schedule.request
    return json.dumps(
        {
            "task": request.task,
            "args": list(request.args),
            "kwargs": dict(request.kwargs),
            "queue": request.queue,
            "priority": request.priority,
            "max_attempts": request.max_attempts,
            "flow": None if request.flow is None else flow_text(request.flow),
            **({"tags": list(request.tags)} if request.tags else {}),
            **({"meta": dict(request.meta)} if request.meta else {}),
            "cron": schedule.cron,
            "every": schedule.every,
            "tz": schedule.tz,
            "missed": schedule.missed,
            "grace": schedule.grace,
            "catch_up": schedule.catch_up,
            "jitter": schedule.jitter,
            "skip_if_running": schedule.skip_if_running,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


@functools.lru_cache(maxsize=4096)
def schedule_from_json(name: str, text: str) -> Schedule:
    """The declaration stored by :func:`schedule_to_json`.

    Cached: every worker reads every schedule at every pass, and the stored
    text rarely changes (a Schedule is frozen, so one can be shared).
    """
    data = json.loads(text)
    request = EnqueueRequest(
        task=data["task"],
        args=tuple(data["args"]),
        kwargs=data["kwargs"],
        queue=data["queue"],
        priority=data["priority"],
        max_attempts=data["max_attempts"],
        flow=None if data.get("flow") is None else flow_from_text(data["flow"]),
        tags=tuple(data.get("tags", ())),
        meta=data.get("meta", {}),
    )
    return Schedule(
        name=name,
        request=request,
        cron=data["cron"],
        every=data["every"],
        tz=data["tz"],
        missed=data["missed"],
        grace=data["grace"],
        catch_up=data["catch_up"],
        jitter=data["jitter"],
        skip_if_running=data["skip_if_running"],
    )


__all__ = [
    "CATCH_UP_LIMIT",
    "MISSED_POLICIES",
    "RUN_KEY_PREFIX",
    "SCHEDULE_NAME_MAX_LENGTH",
    "TICK_KEY_PREFIX",
    "MissedPolicy",
    "Schedule",
    "ScheduleNotFound",
    "ScheduleRecord",
    "TickPlan",
    "TickResult",
    "check_schedule_name",
    "check_schedules",
    "due_ticks",
    "earliest_tick",
    "idle",
    "jitter_offset",
    "next_tick",
    "plan_ticks",
    "resumed",
    "run_request",
    "schedule_from_json",
    "schedule_names",
    "schedule_to_json",
    "synced",
    "tick_key",
    "tick_of",
    "tick_request",
]
