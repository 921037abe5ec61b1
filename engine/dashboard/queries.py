"""What the pages show, read through the driver SPI (never SQL)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from taskharbor.spec import Driver, InvalidRequest, JobFilter, JobRecord, JobState, check_tag

PAGE_SIZE = 50
SINCE = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1), "24h": timedelta(days=1),
         "7d": timedelta(days=7)}  # fmt: skip
"""The time filters of the jobs page: created within the last ..."""


@dataclass(frozen=True)
class QueueSummary:
    """One queue on the overview: jobs per state and its oldest ready job's age."""

    name: str
    counts: Mapping[JobState, int]
    oldest_ready: timedelta | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def queue_summaries(
    driver: Driver,
    counts: Mapping[tuple[str, JobState], int],
    now: datetime,
    also: Collection[str] = (),
) -> list[QueueSummary]:
    """Every queue with jobs, and those named in ``also`` (paused ones), by name.  The
    oldest ready job is the first ``available`` one in enqueue order; its age counts
    from its ``run_at``."""
    by_queue: dict[str, dict[JobState, int]] = {name: dict.fromkeys(JobState, 0) for name in also}
    for (queue, state), n in counts.items():
        by_queue.setdefault(queue, dict.fromkeys(JobState, 0))[JobState(state)] = n
    summaries = []
    for name in sorted(by_queue):
        age = None
        if by_queue[name][JobState.AVAILABLE]:
            first = driver.list_jobs(
                JobFilter(states=frozenset({JobState.AVAILABLE}), queue=name, limit=1)
            )
            if first:
                age = max(now - first[0].run_at, timedelta(0))
        summaries.append(QueueSummary(name, by_queue[name], age))
    return summaries


@dataclass(frozen=True)
class JobQuery:
    """The jobs page's filters and position, as given in its URL."""

    state: JobState | None = None
    queue: str | None = None
    task: str | None = None
    since: str | None = None
    tag: str | None = None
    before: int | None = None
    after: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, params: Mapping[str, str], *, state: JobState | None = None) -> JobQuery:
        """The query from URL parameters; a bad value is an ``InvalidRequest`` naming it."""
        raw_state = params.get("state") or None
        if raw_state is not None and raw_state not in JobState.__members__.values():
            raise InvalidRequest(f"unknown state {raw_state!r}")
        since = params.get("since") or None
        if since is not None and since not in SINCE:
            raise InvalidRequest(f"unknown time filter {since!r} (one of {', '.join(SINCE)})")
        tag = params.get("tag") or None
        if tag is not None:
            check_tag(tag, "tag filter")
        return cls(
            state=state or (JobState(raw_state) if raw_state else None),
            queue=params.get("queue") or None,
            task=params.get("task") or None,
            since=since,
            tag=tag,
            before=_id(params, "before"),
            after=_id(params, "after"),
        )

    def where(self, now: datetime) -> JobFilter:
        """The SPI filter of one page (one more job than a page, to know if there is more)."""
        return JobFilter(
            states=None if self.state is None else frozenset({self.state}),
            queue=self.queue,
            task=self.task,
            created_since=None if self.since is None else now - SINCE[self.since],
            tag=self.tag,
            before_id=self.before,
            after_id=self.after,
            newest_first=self.after is None,
            limit=PAGE_SIZE + 1,
        )

    def params(self, **changes: object) -> dict[str, str]:
        """The URL parameters of this query with ``changes`` (None drops one)."""
        values: dict[str, object] = {
            "state": self.state, "queue": self.queue, "task": self.task, "since": self.since,
            "tag": self.tag,
        }  # fmt: skip
        values.update(changes)
        return {k: str(v) for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class Page:
    """One page of jobs and the ids to page from."""

    jobs: list[JobRecord]
    older: int | None
    newer: int | None


def page_of(query: JobQuery, driver: Driver, now: datetime) -> Page:
    """One page, newest first: the newest jobs, those before an id, or those just
    after one (read upwards, then reversed); ``older``/``newer`` when there are more."""
    fetched = driver.list_jobs(query.where(now))
    more = len(fetched) > PAGE_SIZE
    jobs = fetched[:PAGE_SIZE]
    if query.after is not None:
        jobs.reverse()
        return Page(jobs, jobs[-1].id if jobs else None, jobs[0].id if more and jobs else None)
    newer = jobs[0].id if query.before is not None and jobs else None
    return Page(jobs, jobs[-1].id if more else None, newer)


def _id(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name) or None
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidRequest(f"{name} must be a job id, not {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    event: str
    detail: str = ""


def timeline(job: JobRecord) -> list[TimelineEntry]:
    """The job's history as its record tells it: enqueued, each failed attempt,
    its lease while running, how it finished.  (The SPI keeps no transition log;
    this is every instant the record stores.)"""
    entries = [TimelineEntry(job.created_at, "enqueued", f"queue {job.queue}")]
    if job.run_at > job.created_at and job.state in (JobState.SCHEDULED, JobState.RETRYING):
        entries.append(TimelineEntry(job.run_at, "due", f"runs at the earliest then ({job.state})"))
    for error in job.errors:
        entries.append(
            TimelineEntry(
                error.at, f"attempt {error.attempt} failed", f"{error.type}: {error.message}"
            )
        )
    if job.state == JobState.RUNNING and job.lease_expires_at is not None:
        entries.append(
            TimelineEntry(
                job.lease_expires_at,
                f"attempt {job.attempt} running",
                f"leased by {job.leased_by or '?'}; lease expires then unless heartbeated",
            )
        )
    if job.finished_at is not None:
        entries.append(TimelineEntry(job.finished_at, str(job.state), job.reason or ""))
    return sorted(entries, key=lambda e: e.at)
