"""Workers SIGKILLed at random moments: nothing lost, nothing run twice at once, fast rescue.

Three worker processes run short jobs while the test kills a random one at
random moments (while leasing, mid-handler, mid-report: the kills are not
aimed, the moments are random; the victim is a worker that has started) and
starts a replacement; then the last
workers drain and the ledger check runs (see :mod:`fault_ledger`).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import fault_table
import pytest
from fault_fleet import FAST_WORKER, Fleet, fresh_store, read_ledger
from fault_ledger import check_ledger
from fault_profile import SEEDS, scaled
from fault_worker import make_app

from taskharbor.spec.records import LEASE_EXPIRED_TYPE

JOBS = scaled(60, 240)
KILLS = scaled(4, 12)
KILL_EVERY = (0.3, 1.0)
"""Seconds between two kills (uniform)."""
RESCUE_SLACK = 5.0
"""Seconds a busy machine may add to a rescue (surviving workers' loops run late), while
it has no more runnable processes than cores; beyond that, in proportion."""
TIMEOUT = 120.0


def oversubscription() -> float:
    """Runnable processes per core over the last minute, at least 1 (an idle machine)."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_kills_lose_nothing(kind: str, seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.jsonl"
    oversubscribed = [oversubscription()]
    with fresh_store(kind, tmp_path) as store:
        app, work = make_app(store, ledger)
        jobs = [work.enqueue(n, rng.uniform(0.2, 0.6)) for n in range(JOBS)]
        with Fleet(store, ledger) as fleet:
            fleet.start(3)
            deadline = time.monotonic() + TIMEOUT
            fleet.kill_at_random(rng, KILLS, KILL_EVERY)
            fleet.wait_until(
                lambda: all(app.get_job(job).finished for job in jobs),
                "every job finished",
                deadline=deadline,
                poll=0.1,
            )
            oversubscribed.append(oversubscription())
            fleet.stop()
            finished = [app.get_job(job) for job in jobs]
            figures = check_ledger(finished, read_ledger(ledger), fleet.kills)
        app.close()
    fault_table.record(
        fault_table.Row(
            f"SIGKILL workers ({kind}, seed {seed})", JOBS, KILLS, *vars(figures).values()
        )
    )
    assert (figures.lost, figures.double_transitions) == (0, 0)
    lease = FAST_WORKER["lease"]
    # The lease, one maintenance pass, and slack for a loaded machine (seen: 4.7 s at load 10
    # on 2 cores, 7.4 s at load 20), which grows with the machine's oversubscription.
    slack = RESCUE_SLACK * max(oversubscribed)
    bound = lease + FAST_WORKER["maintenance_interval"] + slack
    assert figures.max_rescue_seconds is not None, "no kill landed while a handler ran"
    assert figures.max_rescue_seconds < bound
    for job in finished:  # every attempt but the last was cut short by a kill
        assert {error.type for error in job.errors} <= {LEASE_EXPIRED_TYPE}, job
