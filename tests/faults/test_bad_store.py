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

import errno
import json
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import fault_table
import psycopg
import pytest
from fault_fleet import Fleet, fresh_store, read_ledger
from fault_ledger import check_ledger
from fault_worker import make_app
from unprivileged import python_without_write_rights
from workflow_crash_app import Store

import taskharbor as th
from driver_registry import POSTGRES_URL
from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.drivers.sqlite.schema import DatabaseFileError
from taskharbor.spec import CORRUPT_JOB_TYPE, CorruptJob, JobState

TIMEOUT = 60.0


def eventually(condition: Callable[[], bool], what: str, fleet: Fleet) -> None:
    fleet.wait_until(condition, what, deadline=time.monotonic() + TIMEOUT)


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
        with pytest.raises(CorruptJob, match=f"job {bad_state} .*unknown state 'bogus'"):
            app.stats()
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


@contextmanager
def tiny_disk(where: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (skips where mounting is not allowed).

    Larger than SQLite's write-ahead log grows before its automatic checkpoint
    (about 4 MB): on a smaller disk the log itself fills the space freed.
    """
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path) -> Path:
    """Write a file on ``disk`` until no byte is left; the file, to delete to free the space."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.mark.timing
def test_a_full_disk_stalls_the_sqlite_worker_until_space_is_freed(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    with tiny_disk(tmp_path / "disk") as disk:
        store = Store("sqlite", str(disk / "jobs.db"))
        app, work = make_app(store, ledger)
        jobs = [work.options(delay=2.0).enqueue(n, 0.01) for n in range(10)]
        with Fleet(store, ledger) as fleet:
            fleet.start()
            fleet.wait_started()
            filler = fill(disk)
            full = f"the disk holding {store.location} is full"
            with pytest.raises(DatabaseFileError, match=re.escape(full)) as caught:
                work.enqueue(99, "x" * 100_000)
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            failing = f"reading or writing {store.location} failed"
            # Once the jobs are due, promoting them needs space there is not.
            eventually(
                lambda: full in fleet.log_text() or failing in fleet.log_text(),
                "the full disk logged by the worker",
                fleet,
            )
            fleet.check_alive()
            filler.unlink()
            eventually(all_succeeded(app, jobs), "every job's success once space is free", fleet)
            fleet.stop()
            finished = [app.get_job(job) for job in jobs]
            figures = check_ledger(finished, read_ledger(ledger), fleet.kills)
        app.close()
    fault_table.record(figures.row("full disk (sqlite)", len(jobs), 1))
    assert (figures.lost, figures.double_transitions) == (0, 0)


def test_a_read_only_sqlite_file_is_refused_with_its_path(tmp_path: Path) -> None:
    """Run as user ``nobody`` when root (root may write a read-only file), on a copy of
    the package it can read: the worker names the file."""
    home = Path(tempfile.mkdtemp(prefix="th-readonly-"))  # tmp_path is closed to other users
    try:
        home.chmod(0o755)
        store = Store("sqlite", str(home / "jobs.db"))
        app, work = make_app(store, tmp_path / "unused-ledger.jsonl")
        job = work.enqueue(1, 0.01)
        app.close()  # the last connection gone, the file stands alone (no -wal, no -shm)
        without_write_rights = python_without_write_rights()
        with Fleet(store, home / "ledger.jsonl", python=without_write_rights) as fleet:
            fleet.start()
            [worker] = fleet.working
            assert worker.wait(timeout=60) != 0
            fleet.working.clear()
            log = fleet.log_text()
        assert f"cannot write to {store.location}" in log, log
        assert "attempt to write a readonly database" in log
        with store.open_app() as app:
            stored = app.get_job(job)
        assert (stored.state, stored.attempt) == (JobState.AVAILABLE, 0)
    finally:
        shutil.rmtree(home)
    fault_table.record(fault_table.Row("read-only file (sqlite)", 1, 1, 0, 0, None))


@pytest.mark.postgres
@pytest.mark.timing
def test_a_dropped_schema_is_logged_and_work_resumes_once_it_is_back(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    with fresh_store("postgres", tmp_path) as store:
        app, work = make_app(store, ledger)
        before = [work.enqueue(n, 0.01) for n in range(5)]
        with Fleet(store, ledger) as fleet:
            fleet.start()
            eventually(all_succeeded(app, before), "the first jobs' success", fleet)
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{store.schema}" CASCADE')
            missing = f'relation "{store.schema}.jobs" does not exist'
            eventually(lambda: missing in fleet.log_text(), "the dropped schema logged", fleet)
            fleet.check_alive()
            driver = PostgresDriver(POSTGRES_URL, schema=store.schema)
            driver.migrate()
            driver.close()
            after = [work.enqueue(n, 0.01) for n in range(5)]
            eventually(all_succeeded(app, after), "the new jobs' success", fleet)
            fleet.stop()
            figures = check_ledger([app.get_job(job) for job in after], read_ledger(ledger), {})
        app.close()
    fault_table.record(figures.row("dropped schema (postgres)", 10, 1))
    assert (figures.lost, figures.double_transitions) == (0, 0)
