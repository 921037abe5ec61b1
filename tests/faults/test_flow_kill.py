"""Flow limits through SIGKILLs on PostgreSQL and Redis: caps never exceeded, sequences
in order.

Four worker processes (four slots each, so sixteen slots for a global cap of
:data:`~fault_worker.KEYED_CAP`) run ``fault.keyed`` jobs over twenty keys with
``concurrency=1`` per key and ``sequence=True``, while the test SIGKILLs a random
worker at random moments and starts a replacement.  Afterwards the ledger is
swept in time order: at every instant at most one attempt per key and at most
the cap in all are inside their handler.

The overlap the lease rules allow is computed, not guessed.  A killed attempt's
handler stops at the kill, but its slot stays taken until the store rescues the
job (``lease_expired``): the slot is counted from the attempt's start to the
earlier of its kill and its rescue, the rescue put on the ledger's clock from
the kill's two clocks.  A rescue before the kill (a lease that ran out while its
worker was alive) is the one case where a handler may still run beside the next
holder of its slot; that stretch is left out, and only that.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import fault_table
import pytest
from fault_fleet import FAST_WORKER, Fleet, Kill, fresh_store, read_ledger
from fault_ledger import check_ledger
from fault_profile import SEEDS, scaled
from fault_worker import KEYED_CAP, KEYED_TASK, make_app

import taskharbor as th
from taskharbor.spec.records import LEASE_EXPIRED_TYPE

KEYS = 20
JOBS = scaled(200, 2_000)
KILLS = scaled(4, 12)
KILL_EVERY = (0.3, 1.0)
TIMEOUT = scaled(180, 900)

STORES = [pytest.param("postgres", marks=pytest.mark.postgres), "redis"]


def slots(
    jobs: dict[int, th.Job], entries: list[dict[str, Any]], kills: dict[int, Kill]
) -> list[tuple[float, int, str]]:
    """Each attempt's slot as two events ``(t, +1 | -1, key)`` on the ledger's clock."""
    starts = {(e["job"], e["attempt"]): e for e in entries if e["event"] == "start"}
    ends = {(e["job"], e["attempt"]): e for e in entries if e["event"] == "end"}
    events: list[tuple[float, int, str]] = []
    for (job_id, attempt), start in starts.items():
        end = ends.get((job_id, attempt))
        if end is not None:
            until = end["t"]
        else:
            kill = kills[start["pid"]]  # a start without an end: its worker was killed
            rescue = next(
                error.at
                for error in jobs[job_id].errors
                if error.attempt == attempt and error.type == LEASE_EXPIRED_TYPE
            )
            rescued = kill.monotonic - (kill.wall - rescue).total_seconds()
            until = min(kill.monotonic, rescued)
        events += [(start["t"], +1, start["key"]), (until, -1, start["key"])]
    return sorted(events, key=lambda event: (event[0], event[1]))  # ends before starts


def most_at_once(events: list[tuple[float, int, str]]) -> tuple[int, int]:
    """The most slots taken at one instant: by one key, and in all."""
    by_key: Counter[str] = Counter()
    total = most_key = most_total = 0
    for _, step, key in events:
        by_key[key] += step
        total += step
        most_key, most_total = max(most_key, by_key[key]), max(most_total, total)
    return most_key, most_total


def sequence_breaks(jobs: dict[int, th.Job], entries: list[dict[str, Any]]) -> list[str]:
    """A key's job that started before the key's previous job (by id) had ended."""
    first_start: dict[int, float] = {}
    last_end: dict[int, float] = {}
    for entry in entries:
        if entry["event"] == "start":
            first_start.setdefault(entry["job"], entry["t"])
        elif entry["event"] == "end":
            last_end[entry["job"]] = entry["t"]
    by_key: dict[str, list[int]] = defaultdict(list)
    for job in sorted(jobs.values(), key=lambda job: job.id):
        by_key[str(job.args[1])].append(job.id)
    return [
        f"key {key}: job {later} started before job {earlier} ended"
        for key, ids in by_key.items()
        for earlier, later in itertools.pairwise(ids)
        if first_start[later] < last_end[earlier]
    ]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", STORES)
def test_flow_limits_hold_through_random_kills(kind: str, seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.jsonl"
    with fresh_store(kind, tmp_path) as store:
        app, _ = make_app(store, ledger)
        keyed = app.tasks[KEYED_TASK]
        ids = [keyed.enqueue(n, f"k{n % KEYS}", rng.uniform(0.02, 0.1)).id for n in range(JOBS)]
        with Fleet(store, ledger, options={**FAST_WORKER, "concurrency": 4}) as fleet:
            fleet.start(4)
            deadline = time.monotonic() + TIMEOUT
            fleet.kill_at_random(rng, KILLS, KILL_EVERY)
            fleet.wait_until(
                lambda: all(app.get_job(job_id).finished for job_id in ids),
                "every job finished",
                deadline=deadline,
                poll=0.2,
            )
            fleet.stop()
            jobs = {job_id: app.get_job(job_id) for job_id in ids}
            entries = [e for e in read_ledger(ledger) if "key" in e]
            figures = check_ledger(list(jobs.values()), entries, fleet.kills)
        app.close()
    most_key, most_total = most_at_once(slots(jobs, entries, fleet.kills))
    fault_table.record(
        fault_table.Row(
            f"SIGKILL under flow limits ({kind}, seed {seed})",
            JOBS,
            KILLS,
            *vars(figures).values(),
        )
    )
    assert (figures.lost, figures.double_transitions) == (0, 0)
    assert most_key == 1, f"{most_key} attempts of one key at once"
    assert most_total <= KEYED_CAP, f"{most_total} attempts at once, cap {KEYED_CAP}"
    assert most_total > 1, "the keys never ran side by side: the scenario tests nothing"
    assert sequence_breaks(jobs, entries) == []
