"""A store damaged under a running worker: clear errors naming the problem, other jobs served.

The decision (see docs/guarantees.md): a job whose row cannot be read is sent
to the dead-letter queue by the driver that leased it, with a ``CorruptJob``
error naming the job and the problem, and the rest of the batch runs.  A row
in a state no version writes is never leased; reading it raises
``CorruptJob`` naming the job.  A dropped schema, a read-only file or a full
disk make the worker log the store's error and retry, never exit or lose a
job.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import fault_table
import psycopg
import pytest
from fault_fleet import Fleet, fresh_store
from fault_worker import make_app

import taskharbor as th
from driver_registry import POSTGRES_URL
from taskharbor.drivers.corrupt_rows import CORRUPT_JOB_TYPE, CorruptJob
from taskharbor.spec import JobState

TIMEOUT = 60.0


def eventually(condition: Callable[[], bool], what: str, fleet: Fleet) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen; see {fleet.logs()}"
        fleet.check_alive()
        time.sleep(0.05)


def all_succeeded(app: th.App, jobs: list[th.Job]) -> Callable[[], bool]:
    return lambda: all(app.get_job(job).state is JobState.SUCCEEDED for job in jobs)


def test_corrupt_sqlite_rows_are_named_and_the_other_jobs_run(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    with fresh_store("sqlite", tmp_path) as store:
        app, work = make_app(store, ledger)
        jobs = [work.enqueue(n, 0.01) for n in range(6)]
        bad_json, bad_shape, bad_state = (job.id for job in jobs[1:4])
        conn = sqlite3.connect(store.location)
        with conn:
            conn.execute("UPDATE jobs SET args = '[1,' WHERE id = ?", (bad_json,))
            conn.execute("UPDATE jobs SET kwargs = '[]' WHERE id = ?", (bad_shape,))
            conn.execute("PRAGMA ignore_check_constraints = ON")
            conn.execute("UPDATE jobs SET state = 'bogus' WHERE id = ?", (bad_state,))
        good = [job for job in jobs if job.id not in (bad_json, bad_shape, bad_state)]
        with Fleet(store, ledger) as fleet:
            fleet.start()
            eventually(all_succeeded(app, good), "the good jobs' success", fleet)
            fleet.stop()
        for bad, problem in [
            (bad_json, "JSONDecodeError"),
            (bad_shape, "TypeError: kwargs must be"),
        ]:
            state, errors = conn.execute(
                "SELECT state, errors FROM jobs WHERE id = ?", (bad,)
            ).fetchone()
            assert state == JobState.DEAD.value
            [error] = json.loads(errors)
            assert error["type"] == CORRUPT_JOB_TYPE
            assert f"job {bad} cannot be read from the store: {problem}" in error["message"]
            assert f"job {bad} cannot be read from the store: {problem}" in fleet.log_text()
        with pytest.raises(CorruptJob, match=f"job {bad_json} .*JSONDecodeError"):
            app.get_job(bad_json)
        with pytest.raises(CorruptJob, match=f"job {bad_state} .*'bogus' is not a valid JobState"):
            app.get_job(bad_state)
        conn.close()
        app.close()
    fault_table.record(fault_table.Row("corrupt rows (sqlite)", len(jobs), 3, 0, 0, None))


@pytest.mark.postgres
def test_postgres_refuses_what_its_schema_forbids_and_dead_letters_wrong_shapes(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    with fresh_store("postgres", tmp_path) as store:
        app, work = make_app(store, ledger)
        jobs = [work.enqueue(n, 0.01) for n in range(4)]
        bad = jobs[1].id
        table = f'"{store.schema}".jobs'
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                conn.execute(f"UPDATE {table} SET args = '[1,' WHERE id = %s", (bad,))
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(f"UPDATE {table} SET state = 'bogus' WHERE id = %s", (bad,))
            conn.execute(f"""UPDATE {table} SET args = '{{"n": 1}}' WHERE id = %s""", (bad,))
        good = [job for job in jobs if job.id != bad]
        with Fleet(store, ledger) as fleet:
            fleet.start()
            eventually(all_succeeded(app, good), "the good jobs' success", fleet)
            fleet.stop()
        assert f"job {bad} cannot be read from the store: TypeError: args must be" in (
            fleet.log_text()
        )
        with pytest.raises(CorruptJob, match=f"job {bad} .*args must be a JSON list, not dict"):
            app.get_job(bad)
        with psycopg.connect(POSTGRES_URL) as conn:
            row = conn.execute(
                f"SELECT state, errors FROM {table} WHERE id = %s", (bad,)
            ).fetchone()
        assert row is not None and row[0] == JobState.DEAD.value
        assert CORRUPT_JOB_TYPE in json.dumps(row[1]) and len(row[1]) == 1
        app.close()
    fault_table.record(fault_table.Row("corrupt rows (postgres)", len(jobs), 1, 0, 0, None))
