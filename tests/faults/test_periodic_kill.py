"""An every-second schedule on a fleet whose workers are SIGKILLed: each tick runs as one job.

Every worker process (4 on PostgreSQL, 3 on SQLite) declares the same
schedule and enqueues its due ticks in its maintenance pass; there is no
leader.  The test SIGKILLs a random started worker at random moments and
starts a replacement, for the run's duration, then lets the fleet finish the
ticks it made and stops it.  The store and the ledger must then show, for
every tick of the window (from the first tick to the last one made before the
kills stopped): exactly one job, succeeded, and in the ledger only that job
(a rerun after a kill is the same job's next attempt, never a second job).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fault_table
import pytest
from fault_fleet import FAST_WORKER, Fleet, fresh_store, read_ledger
from fault_profile import SEEDS, scaled
from fault_worker import TICK_TASK, add_ticks, make_app

from taskharbor.spec import JobFilter, JobRecord, JobState
from taskharbor.spec.schedules import tick_of

DURATION = scaled(8, 60)
"""Seconds of kills and restarts while the schedule ticks every second."""
KILL_EVERY = (0.5, 1.5)
WORKERS = {"postgres": 4, "sqlite": 3}
SETTLE_TIMEOUT = 60.0
"""How long the fleet may take to finish the window's jobs once the kills stop (a hang bound)."""


def tick_jobs(jobs: list[JobRecord]) -> dict[datetime, list[JobRecord]]:
    by_tick: dict[datetime, list[JobRecord]] = defaultdict(list)
    for job in jobs:
        made_by = tick_of(job)
        assert made_by is not None and made_by[0] == "fault-ticks", job
        by_tick[made_by[1]].append(job)
    return by_tick


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("seed", SEEDS)
def test_every_tick_runs_as_exactly_one_job_while_workers_are_killed(
    kind: str, seed: int, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.jsonl"
    kills = 0
    with fresh_store(kind, tmp_path) as store:
        app, _ = make_app(store, ledger)
        add_ticks(app, ledger, 1)
        with Fleet(store, ledger, options={**FAST_WORKER, "tick_every": 1}) as fleet:
            fleet.start(WORKERS[kind])
            fleet.wait_for_started()
            stop_at = time.monotonic() + DURATION
            while time.monotonic() < stop_at:
                time.sleep(rng.uniform(*KILL_EVERY))
                fleet.check_alive()
                fleet.kill(rng.choice(fleet.wait_for_started()))
                kills += 1
                fleet.start()
            last = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
            deadline = time.monotonic() + SETTLE_TIMEOUT

            def window_done() -> bool:
                """Every tick up to ``last`` has its job, finished.  A job is found by its
                tick, not its run_at: a rescue after a kill moves run_at past the window
                while the job still waits to retry."""
                jobs = app.driver.list_jobs(JobFilter(task=TICK_TASK, limit=100_000))
                ticks = tick_jobs(jobs)
                return last in ticks and all(
                    job.finished_at for tick, made in ticks.items() if tick <= last for job in made
                )

            fleet.wait_until(window_done, "every tick finished", deadline=deadline, poll=0.1)
            fleet.stop()
        jobs = app.driver.list_jobs(JobFilter(task=TICK_TASK, limit=100_000))
        app.close()
    by_tick = tick_jobs(jobs)
    first = min(by_tick)
    window = [first + timedelta(seconds=s) for s in range(int((last - first).total_seconds()) + 1)]
    assert len(window) >= DURATION - 2, (first, last)
    missing = [tick for tick in window if tick not in by_tick]
    doubled = {tick: [j.id for j in made] for tick, made in by_tick.items() if len(made) > 1}
    off_grid = [tick for tick in by_tick if tick.microsecond]
    fault_table.record(
        fault_table.Row(
            f"SIGKILL periodic workers ({kind}, seed {seed}): ticks",
            len(window),
            kills,
            len(missing),
            len(doubled),
            None,
        )
    )
    assert (missing, doubled, off_grid) == ([], {}, [])
    window_jobs = [by_tick[tick][0] for tick in window]
    assert {job.state for job in window_jobs} == {JobState.SUCCEEDED}
    # (run_at is the tick at enqueue; a rescue after a kill sets it to the rescue's now)
    ran: dict[str, set[int]] = defaultdict(set)
    ends: dict[str, int] = defaultdict(int)
    for line in read_ledger(ledger):
        ran[line["tick"]].add(line["job"])
        ends[line["tick"]] += line["event"] == "end"
    for job, tick in zip(window_jobs, window, strict=True):
        assert ran[tick.isoformat()] == {job.id}, (tick, ran[tick.isoformat()])
        assert ends[tick.isoformat()] >= 1
    assert kills >= 1
