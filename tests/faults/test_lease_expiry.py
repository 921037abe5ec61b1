"""A handler outlives its lease (heartbeats blocked): fencing refuses its late completion.

Each slow job first runs on a worker whose heartbeats never come (its
heartbeat interval is an hour) and whose one slot the slow first attempt
keeps busy.  The lease expires while the handler still sleeps; a normal
worker rescues the job and runs attempt 2, which succeeds first.  When the
slow attempt returns, the store refuses its completion: the stored result is
attempt 2's, the ledger shows both attempts ran to the end, and the blocked
worker logs the refusal.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import fault_table
import pytest
from fault_fleet import Fleet, fresh_store, read_ledger
from fault_ledger import check_ledger
from fault_profile import SEEDS, scaled
from fault_worker import make_app

from taskharbor.spec.records import LEASE_EXPIRED_TYPE

JOBS = scaled(2, 4)
BLOCKED = {"concurrency": 1, "lease": 1.0, "heartbeat_interval": 3600.0}
TIMEOUT = 60.0


def started(ledger: Path, count: int) -> bool:
    return sum(entry["event"] == "start" for entry in read_ledger(ledger)) >= count


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_late_completion_is_refused_and_the_rerun_wins(
    kind: str, seed: int, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.jsonl"
    with fresh_store(kind, tmp_path) as store:
        app, work = make_app(store, ledger)
        jobs = [work.enqueue(n, 0.05, slow_first=rng.uniform(2.5, 3.5)) for n in range(JOBS)]
        with Fleet(store, ledger) as fleet:
            fleet.start(JOBS, **BLOCKED)
            deadline = time.monotonic() + TIMEOUT
            fleet.wait_until(
                lambda: started(ledger, JOBS),
                "each blocked worker holding one slow attempt",
                deadline=deadline,
            )
            fleet.start()  # the normal worker that rescues and re-runs them
            fleet.wait_until(
                lambda: all(
                    sum(e["event"] == "end" and e["job"] == job.id for e in read_ledger(ledger))
                    == 2
                    for job in jobs
                ),
                "two ended attempts of every job",
                deadline=deadline,
                poll=0.1,
            )
            fleet.stop()
            finished = [app.get_job(job) for job in jobs]
            figures = check_ledger(finished, read_ledger(ledger), {}, overlap_allowed=True)
        app.close()
    fault_table.record(
        figures.row(f"lease expiry, late completion ({kind}, seed {seed})", JOBS, JOBS)
    )
    assert (figures.lost, figures.double_transitions) == (0, 0)
    for job in finished:
        assert (job.attempt, job.result) == (2, [job.args[0], 2]), job
        assert [(error.attempt, error.type) for error in job.errors] == [(1, LEASE_EXPIRED_TYPE)]
        assert f"report refused: lease lost on job {job.id}" in fleet.log_text()
