"""The check after every scenario: the store and the ledger agree, and nothing was lost.

* every job ends in its contracted state (``expected``);
* the attempts the ledger saw start are attempts the store counted, and the
  last one ran to the end and gave the stored result;
* every attempt the store counted ended once: one error entry per earlier
  attempt, then the final outcome (a second transition would add an entry);
* no two attempts of a job overlap while both hold a live lease: the next
  attempt starts after the previous one ended, or after its worker was killed;
* the time from a kill to the store's rescue of each job it interrupted (the
  ``LeaseExpired`` error's time) is measured, for the caller to bound.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import fault_table
from fault_fleet import Kill

import taskharbor as th
from taskharbor.spec import JobState
from taskharbor.spec.records import LEASE_EXPIRED_TYPE


@dataclass(frozen=True)
class Figures:
    lost: int
    double_transitions: int
    max_rescue_seconds: float | None

    def row(self, scenario: str, jobs: int, injected: int) -> fault_table.Row:
        return fault_table.Row(
            scenario, jobs, injected, self.lost, self.double_transitions, self.max_rescue_seconds
        )


def check_ledger(
    jobs: list[th.Job],
    entries: list[dict[str, Any]],
    kills: dict[int, Kill],
    expected: JobState = JobState.SUCCEEDED,
    overlap_allowed: bool = False,
) -> Figures:
    """Assert the ledger's invariants over ``jobs``; the figures for the summary table.

    ``overlap_allowed`` is for the scenario that blocks heartbeats on purpose:
    there the first attempt's lease expires while its handler still runs.
    """
    runs: dict[int, dict[int, dict[str, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for entry in entries:
        runs[entry["job"]][entry["attempt"]][entry["event"]] = entry
    lost = [job.id for job in jobs if job.state is not expected]
    double = [job.id for job in jobs if len(job.errors) + job.finished != job.attempt]
    rescues: list[float] = []
    for job in jobs:
        attempts = runs[job.id]
        assert set(attempts) <= set(range(1, job.attempt + 1)), (
            f"job {job.id}: the ledger saw attempts {sorted(attempts)}, the store counts "
            f"{job.attempt}"
        )
        if expected is JobState.SUCCEEDED and job.state is expected:
            assert "end" in attempts[job.attempt], f"job {job.id}: its last attempt never ended"
            assert job.result == [job.args[0], job.attempt], f"job {job.id}: {job.result}"
        ordered = sorted(attempts.items())
        for (_, earlier), (_, later) in itertools.pairwise(ordered):
            begun = later["start"]["t"]
            finished = earlier.get("end") or earlier.get("error")
            kill = kills.get(earlier["start"]["pid"])
            killed = None if kill is None else kill.monotonic
            if finished is not None and (killed is None or finished["t"] <= killed):
                assert overlap_allowed or finished["t"] <= begun, (
                    f"job {job.id}: attempt {later['start']['attempt']} started while "
                    "the one before still ran"
                )
            else:
                assert killed is not None and killed <= begun, (
                    f"job {job.id}: an attempt stopped without an end and without a kill"
                )
                assert kill is not None
                rescues.append(rescue_delay(job, earlier["start"]["attempt"], kill))
    return Figures(len(lost), len(double), max(rescues, default=None))


def rescue_delay(job: th.Job, attempt: int, kill: Kill) -> float:
    """Seconds from the kill of ``attempt``'s worker to the store's rescue of that attempt."""
    rescued = [e for e in job.errors if e.attempt == attempt and e.type == LEASE_EXPIRED_TYPE]
    assert rescued, f"job {job.id}: attempt {attempt} was killed but never rescued"
    return (rescued[0].at - kill.wall).total_seconds()
