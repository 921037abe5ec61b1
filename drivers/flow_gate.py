"""Shared by the SQL drivers: the flow-control guards of ``lease``, decided in Python.

A lease walks its candidates in lease order.  A candidate without limits is taken
(and told to the gate: it runs too, for its task's count); one with limits asks the
gate, which answers each guard of :mod:`taskharbor.spec.flow` from a few indexed
lookups (one per task, key and rate bucket met in the call, each then counted on in
memory as the call leases, limited or not), so a lease costs no scan of the jobs
whatever their number.  The store supplies the lookups (:class:`FlowCounts`); the
caller makes them atomic with the lease (one SQLite write transaction).

:meth:`FlowGate.decide` also says *why* a candidate is held, so a walk can pass over
its whole group at once (docs: the group walk; a group is the jobs of one queue and
task that carry the same limits): within one call the counts the guards read only
grow and ``now`` and each key's sequence head are fixed, so the members of a group
share every fact but ``sequence_waits``.
"""

from __future__ import annotations

import enum
from collections import Counter
from datetime import datetime, timedelta
from typing import Protocol

from taskharbor.spec.flow import GROUP_GUARDS, FlowLimits, rate_bucket
from taskharbor.spec.records import JobId
from taskharbor.spec.table import JOB, JobEvent, JobState


class FlowCounts(Protocol):
    """The lookups a store answers for the gate, each in the lease's transaction."""

    def running_of_task(self, task: str) -> int:
        """How many jobs of ``task`` are running."""

    def running_with_key(self, key: str) -> int:
        """How many running jobs carry ``key``."""

    def sequence_head(self, key: str) -> JobId | None:
        """The smallest id among the jobs holding ``key``'s sequence (unfinished
        sequence jobs of the key, and its dead ones that block)."""

    def starts_since(self, bucket: str, since: datetime) -> int:
        """How many starts the rate bucket recorded after ``since``."""


class Verdict(enum.Enum):
    """What the guards say of one limited candidate, and so of its group for the
    rest of the lease call."""

    TAKEN = enum.auto()
    """Admitted: it counts as running; its group goes on with its next job."""
    HELD = enum.auto()
    """Held by a guard of :data:`~taskharbor.spec.flow.GROUP_GUARDS` (running jobs of
    the task or key, starts of a rate bucket): those counts only grow during the
    call, so every later job of its group is held too, for the rest of the call."""
    WAITS_FOR_HEAD = enum.auto()
    """Held by ``sequence_waits`` alone: of its group only its key's sequence head
    (:meth:`FlowGate.head`, fixed for the call) may still be taken in this call."""


class FlowGate:
    """The guards' facts for the candidates of one lease call."""

    def __init__(self, counts: FlowCounts, now: datetime) -> None:
        self._counts = counts
        self._now = now
        self._tasks: Counter[str] = Counter()
        self._unlimited: Counter[str] = Counter()
        self._keys: Counter[str] = Counter()
        self._heads: dict[str, JobId | None] = {}
        self._starts: dict[tuple[str, float], int] = {}
        self._started: Counter[str] = Counter()
        self.starts: list[tuple[str, datetime]] = []
        """The starts to record: (bucket, now) for each leased job with a rate limit."""

    def decide(self, job_id: JobId, task: str, flow: FlowLimits) -> Verdict:
        """Whether the lease takes this candidate (then it is counted as running),
        and if not, whether anything but its key's sequence holds it."""
        facts = self._facts(job_id, task, flow)
        if JOB.permits(JobEvent.LEASE, JobState.AVAILABLE, facts) is None:
            if any(facts[guard] for guard in GROUP_GUARDS):
                return Verdict.HELD
            return Verdict.WAITS_FOR_HEAD
        self._tasks[task] = self._running_of_task(task) + 1
        if flow.key is not None:
            self._keys[flow.key] = self._running_with_key(flow.key) + 1
        bucket = rate_bucket(task, flow)
        if bucket is not None:
            self._started[bucket] += 1
            self.starts.append((bucket, self._now))
        return Verdict.TAKEN

    def takes_more(self, task: str, flow: FlowLimits) -> bool:
        """Whether a later job of the group of a candidate just taken (same task and
        limits) may still be taken in this call.  Not if a guard that counts holds it
        now (the counts only grow), nor if the limits are a sequence's: the job taken
        was its key's head, which every later job of the key waits for."""
        return flow.sequence is None and not any(self._group_facts(task, flow).values())

    def takes_unlimited(self, task: str) -> None:
        """A candidate without limits is taken: it counts as running for its task."""
        if task in self._tasks:
            self._tasks[task] += 1
        else:
            self._unlimited[task] += 1

    def _facts(self, job_id: JobId, task: str, flow: FlowLimits) -> dict[str, bool]:
        key = flow.key
        waits = flow.sequence is not None and key is not None and self.head(key) != job_id
        return {**self._group_facts(task, flow), "sequence_waits": waits}

    def _group_facts(self, task: str, flow: FlowLimits) -> dict[str, bool]:
        """The facts of :data:`~taskharbor.spec.flow.GROUP_GUARDS`: the same for every
        job of a group at a given moment of the call, and once true, true for the rest
        of it."""
        key = flow.key
        rate = flow.rate
        bucket = rate_bucket(task, flow)
        return {
            "task_at_limit": flow.concurrency is not None
            and self._running_of_task(task) >= flow.concurrency,
            "key_at_limit": flow.key_concurrency is not None
            and key is not None
            and self._running_with_key(key) >= flow.key_concurrency,
            "rate_exhausted": rate is not None
            and bucket is not None
            and self._recent(bucket, rate.window) >= rate.starts,
        }

    def _running_of_task(self, task: str) -> int:
        if task not in self._tasks:
            self._tasks[task] = self._counts.running_of_task(task) + self._unlimited[task]
        return self._tasks[task]

    def _running_with_key(self, key: str) -> int:
        if key not in self._keys:
            self._keys[key] = self._counts.running_with_key(key)
        return self._keys[key]

    def head(self, key: str) -> JobId | None:
        """The key's sequence head as the call began: once the lease takes it, it
        runs (still the head), so no later job of the key passes in this call."""
        if key not in self._heads:
            self._heads[key] = self._counts.sequence_head(key)
        return self._heads[key]

    def _recent(self, bucket: str, window: float) -> int:
        """Starts of ``bucket`` in the window ending now, this call's own included."""
        if (bucket, window) not in self._starts:
            since = self._now - timedelta(seconds=window)
            self._starts[bucket, window] = self._counts.starts_since(bucket, since)
        return self._starts[bucket, window] + self._started[bucket]
