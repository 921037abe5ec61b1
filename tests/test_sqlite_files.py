"""Opening SQLite files: migrations, and every file the driver must refuse untouched."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_engine_support import EVENTUALLY
from unprivileged import AS_ROOT, ordinary_python, python_without_write_rights

from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite import driver as sqlite_module
from taskharbor.drivers.sqlite import schema as sqlite_schema
from taskharbor.drivers.sqlite.schema import SCHEMA_VERSION, DatabaseFileError
from taskharbor.spec import (
    DEFAULT_RETRY,
    Completion,
    EnqueueRequest,
    FakeClock,
    InvalidRequest,
    JobFilter,
    JobNotFound,
    JobState,
    SchemaError,
    StoreError,
    retry_delay,
)


def make_store(path: Path, jobs: int = 300) -> None:
    driver = SQLiteDriver(path)
    driver.enqueue([EnqueueRequest("task", (n, "x" * 50)) for n in range(jobs)])
    driver.close()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file in ``folder`` with a digest of its bytes."""
    return {
        entry.name: hashlib.sha256(entry.read_bytes()).hexdigest()
        for entry in sorted(folder.iterdir())
        if entry.is_file()
    }


@contextmanager
def untouched(folder: Path) -> Iterator[None]:
    """Assert that nothing in ``folder`` is written, created or left behind."""
    before = snapshot(folder)
    yield
    assert snapshot(folder) == before


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(data)


def run_script(script: str, *, without_write_rights: bool = False) -> list[str]:
    """Run ``script`` in a fresh interpreter; the lines it printed.

    ``without_write_rights``: as a user for whom read-only files are read-only
    (``nobody`` when the suite runs as root; see tests/unprivileged.py)."""
    python = python_without_write_rights() if without_write_rights else ordinary_python()
    done = subprocess.run(
        [*python.command, "-c", script],
        capture_output=True,
        text=True,
        env=python.env,
        cwd=python.cwd,
        timeout=EVENTUALLY,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


# -- migrations -------------------------------------------------------------------


def test_a_new_file_is_migrated_to_the_current_version_in_wal_mode(tmp_path: Path) -> None:
    SQLiteDriver(tmp_path / "new.db").close()
    with sqlite3.connect(tmp_path / "new.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        version = raw.execute("SELECT value FROM taskharbor_meta").fetchone()
    assert version == (str(SCHEMA_VERSION),)


def test_reopening_and_migrating_again_keeps_the_jobs(tmp_path: Path) -> None:
    make_store(tmp_path / "jobs.db", jobs=3)
    driver = SQLiteDriver(tmp_path / "jobs.db")
    driver.migrate()
    assert [job.args[0] for job in driver.list_jobs(JobFilter())] == [0, 1, 2]
    driver.close()


def test_without_migrate_an_empty_store_asks_for_a_migration_then_works(tmp_path: Path) -> None:
    (tmp_path / "later.db").touch()  # a missing file: see the next test
    driver = SQLiteDriver(tmp_path / "later.db", migrate=False)
    with pytest.raises(
        SchemaError, match=rf"schema version 0, older than {SCHEMA_VERSION}.*taskharbor migrate"
    ):
        driver.count()
    driver.migrate()
    assert driver.count() == {}
    driver.close()


def errors_in_threads(target: Callable[[], object], threads: int) -> list[BaseException]:
    """Run ``target`` in ``threads`` threads at once; the errors they raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # returned, with the thread's error
            errors.append(exc)

    started = [threading.Thread(target=run) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return errors


def test_without_migrate_a_missing_file_is_refused_by_name_until_migrated(
    tmp_path: Path,
) -> None:
    path = tmp_path / "we?ird #name%20.db"
    driver = SQLiteDriver(path, migrate=False)
    for call in (driver.count, lambda: driver.get([1]), lambda: driver.list_jobs(JobFilter())):
        with pytest.raises(SchemaError, match=re.escape(f"{path} does not exist")):
            call()
        assert list(tmp_path.iterdir()) == []
    driver.migrate()  # asked for: now the file is created
    assert driver.count() == {}
    driver.close()


def test_without_migrate_a_file_removed_after_opening_is_not_created_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "we?ird #name%20.db"
    make_store(path, jobs=1)
    driver = SQLiteDriver(path, migrate=False)
    assert sum(driver.count().values()) == 1  # the URI names this very file
    for leftover in tmp_path.iterdir():
        leftover.unlink()
    errors = errors_in_threads(lambda: driver.count(), threads=1)  # a new connection
    driver.close()
    assert len(errors) == 1 and isinstance(errors[0], StoreError), errors
    assert str(path) in str(errors[0])
    assert list(tmp_path.iterdir()) == []


def test_stores_opening_a_new_file_at_once_all_migrate_it(tmp_path: Path) -> None:
    path = tmp_path / "race.db"

    def open_and_enqueue() -> None:
        driver = SQLiteDriver(path)
        driver.enqueue([EnqueueRequest("task")])
        driver.close()

    assert errors_in_threads(open_and_enqueue, threads=6) == []
    driver = SQLiteDriver(path)
    assert sum(driver.count().values()) == 6
    driver.close()


# -- files refused, and left as they were ------------------------------------------


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("shopping list: milk, eggs\n")
    with untouched(tmp_path), pytest.raises(DatabaseFileError, match="not an SQLite database"):
        SQLiteDriver(tmp_path / "notes.db")


@pytest.mark.parametrize(
    ("offset", "garbage"),
    [(16, b"\xff" * 8), (100, b"\x07" * 3000), (200, b"\x00\xff" * 2000)],
    ids=["header", "schema-page", "schema-page-and-beyond"],
)
def test_a_corrupt_store_is_refused(tmp_path: Path, offset: int, garbage: bytes) -> None:
    make_store(tmp_path / "broken.db")
    overwrite(tmp_path / "broken.db", offset, garbage)
    with untouched(tmp_path), pytest.raises(DatabaseFileError, match=r"broken\.db cannot be read"):
        SQLiteDriver(tmp_path / "broken.db")


def test_a_truncated_store_is_refused(tmp_path: Path) -> None:
    make_store(tmp_path / "short.db")
    os.truncate(tmp_path / "short.db", 5000)
    with untouched(tmp_path), pytest.raises(DatabaseFileError, match="malformed"):
        SQLiteDriver(tmp_path / "short.db")


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "crm.db") as raw:
        raw.execute("CREATE TABLE customers (name TEXT)")
    raw.close()
    with untouched(tmp_path), pytest.raises(DatabaseFileError, match="not a TaskHarbor store"):
        SQLiteDriver(tmp_path / "crm.db")


def test_a_store_from_a_newer_version_is_refused_naming_both_versions(tmp_path: Path) -> None:
    make_store(tmp_path / "future.db")
    with sqlite3.connect(tmp_path / "future.db") as raw:
        raw.execute("UPDATE taskharbor_meta SET value = ?", (str(SCHEMA_VERSION + 41),))
    raw.close()
    newer = rf"schema version {SCHEMA_VERSION + 41}, newer than {SCHEMA_VERSION}"
    for migrate in (True, False):
        with untouched(tmp_path), pytest.raises(SchemaError, match=newer):
            SQLiteDriver(tmp_path / "future.db", migrate=migrate)


def test_a_path_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatabaseFileError, match="is not a directory"):
        SQLiteDriver(tmp_path / "missing" / "jobs.db")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_not_a_store(tmp_path: Path) -> None:
    with untouched(tmp_path), pytest.raises(DatabaseFileError, match="not a regular file"):
        SQLiteDriver(tmp_path)


def test_a_path_where_no_file_can_be_created_is_refused(tmp_path: Path) -> None:
    if AS_ROOT:  # root may write anywhere permissions would stop others; /proc refuses all
        folder = Path("/proc")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
    with pytest.raises(DatabaseFileError, match="cannot open"):
        SQLiteDriver(folder / "jobs.db")
    assert not (folder / "jobs.db").exists()


def test_a_read_only_store_is_refused() -> None:
    """Opened by a user who may not write it (as root: run as ``nobody``, since
    root writes read-only files)."""
    folder = Path(tempfile.mkdtemp(prefix="th-frozen-"))  # tmp_path is closed to others
    try:
        folder.chmod(0o755)
        make_store(folder / "frozen.db")
        (folder / "frozen.db").chmod(0o444)
        opener = (
            "from taskharbor.drivers.sqlite import SQLiteDriver\n"
            "from taskharbor.drivers.sqlite.schema import DatabaseFileError\n"
            "try:\n"
            f"    SQLiteDriver({str(folder / 'frozen.db')!r})\n"
            "except DatabaseFileError as exc:\n"
            "    print(exc)\n"
        )
        with untouched(folder):
            [message] = run_script(opener, without_write_rights=True)
        assert message.startswith(f"cannot write to {folder / 'frozen.db'}: ")
    finally:
        shutil.rmtree(folder)


def test_an_in_memory_database_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="needs a file path"):
        SQLiteDriver(":memory:")


def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    driver = SQLiteDriver(tmp_path / "closed.db")
    driver.close()
    with pytest.raises(InvalidRequest, match="closed"):
        driver.count()


# -- the file or its disk failing during a call: named, and nothing changed ----------


def limit_growth(driver: SQLiteDriver, pages: int) -> None:
    """Let this thread's connection grow the file by ``pages`` at most: past that, SQLite
    fails the write with SQLITE_FULL, "database or disk is full", as on a full disk."""
    conn = driver._handle().conn
    [size] = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {size + pages}")


def stored(path: Path) -> list[tuple[object, ...]]:
    """Every row of the jobs table, and the id sequence (a failed insert must not use an id)."""
    with sqlite3.connect(path) as raw:
        rows = raw.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        rows += raw.execute("SELECT * FROM sqlite_sequence").fetchall()
    raw.close()
    return rows


def test_a_full_disk_fails_the_call_naming_the_file_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "full.db"
    driver = SQLiteDriver(path)
    driver.enqueue([EnqueueRequest("task", (1,))])
    before = stored(path)
    limit_growth(driver, 0)
    big = EnqueueRequest("task", ("x" * 100_000,))
    full = f"the disk holding {re.escape(str(path))} is full"
    with pytest.raises(DatabaseFileError, match=full) as caught:
        driver.enqueue([EnqueueRequest("task", (2,)), big])
    assert isinstance(caught.value, StoreError)
    assert "(sqlite: database or disk is full; SQLITE_FULL)" in str(caught.value)
    cause = caught.value.__cause__
    assert isinstance(cause, sqlite3.OperationalError)
    assert cause.sqlite_errorcode == sqlite3.SQLITE_FULL
    assert stored(path) == before
    limit_growth(driver, 1000)  # space freed: the same call succeeds, with the next id
    assert [result.job.id for result in driver.enqueue([big])] == [2]
    driver.close()


def test_a_report_refused_by_a_full_disk_can_be_written_once_space_is_freed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "full.db"
    driver = SQLiteDriver(path)
    driver.enqueue([EnqueueRequest("task")])
    [job] = driver.lease(["default"], 1, 30.0, "worker")
    assert job.lease_token is not None
    report = Completion(job.id, job.lease_token, "x" * 100_000)
    before = stored(path)
    limit_growth(driver, 0)
    with pytest.raises(DatabaseFileError, match="is full"):
        driver.complete([report])
    assert stored(path) == before  # still running under the same lease
    limit_growth(driver, 1000)
    assert driver.complete([report]) == []
    assert driver.get([job.id])[0].state == JobState.SUCCEEDED
    driver.close()


def test_a_disk_io_error_fails_the_call_naming_the_file_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """A file size limit (RLIMIT_FSIZE, in a child process) makes the write of the
    log fail as a failing disk does: SQLite reports SQLITE_IOERR_WRITE at commit."""
    path = tmp_path / "failing.db"
    lines = run_script(
        f"""
import os, resource, signal, sqlite3
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite.schema import DatabaseFileError
from taskharbor.spec import EnqueueRequest, JobFilter

def stored():
    return [job.id for job in driver.list_jobs(JobFilter())]

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
driver = SQLiteDriver({str(path)!r})
driver.enqueue([EnqueueRequest("task")])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
largest = max(os.path.getsize(p) for p in ({str(path)!r}, {str(path)!r} + "-wal"))
resource.setrlimit(resource.RLIMIT_FSIZE, (largest, hard))
try:
    driver.enqueue([EnqueueRequest("task", ("x" * 100_000,))])
except DatabaseFileError as exc:
    print(exc)
    print(exc.__cause__.sqlite_errorname)
print(stored())
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
driver.enqueue([EnqueueRequest("task", ("x" * 100_000,))])
print(stored())
"""
    )
    message, name, after_failure, after_retry = lines
    assert message.startswith(f"reading or writing {path} failed (an I/O error of its disk)")
    assert message.endswith("(sqlite: disk I/O error; SQLITE_IOERR_WRITE)")
    assert name == "SQLITE_IOERR_WRITE"
    assert (after_failure, after_retry) == ("[1]", "[1, 2]")


def test_a_file_made_read_only_under_the_store_fails_its_next_connection() -> None:
    """A connection made after the file became read-only cannot write (as root: run as
    ``nobody``, since root writes read-only files); the error names the file."""
    folder = Path(tempfile.mkdtemp(prefix="th-frozen-"))  # tmp_path is closed to others
    path = folder / "frozen.db"
    try:
        if AS_ROOT:
            shutil.chown(folder, "nobody")  # the child makes its store there
        lines = run_script(
            f"""
import os, threading
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite.schema import DatabaseFileError
from taskharbor.spec import EnqueueRequest, JobFilter

driver = SQLiteDriver({str(path)!r})
driver.enqueue([EnqueueRequest("task")])
os.chmod({str(path)!r}, 0o444)

def enqueue_on_a_new_connection():
    try:
        driver.enqueue([EnqueueRequest("task")])
    except DatabaseFileError as exc:
        print(exc)

thread = threading.Thread(target=enqueue_on_a_new_connection)
thread.start()
thread.join()
print([job.id for job in driver.list_jobs(JobFilter())])
""",
            without_write_rights=True,
        )
    finally:
        shutil.rmtree(folder)
    message, jobs = lines
    assert message.startswith(f"cannot write to {path}: the file, its folder or its disk is read")
    assert message.endswith("(sqlite: attempt to write a readonly database; SQLITE_READONLY)")
    assert jobs == "[1]"


def test_a_write_lock_held_past_the_busy_timeout_is_named_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT_SECONDS", 0.05)
    path = tmp_path / "locked.db"
    driver = SQLiteDriver(path)
    other_process = sqlite3.connect(path, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")
    locked = (
        f"{re.escape(str(path))} is locked: another process held its write lock longer than "
        r"the busy timeout \(0.05 s\)"
    )
    with pytest.raises(DatabaseFileError, match=locked) as caught:
        driver.enqueue([EnqueueRequest("task")])
    assert "(sqlite: database is locked; SQLITE_BUSY)" in str(caught.value)
    other_process.execute("ROLLBACK")
    other_process.close()
    assert stored(path) == []
    assert [result.job.id for result in driver.enqueue([EnqueueRequest("task")])] == [1]
    driver.close()


def test_bugs_and_the_contracts_own_errors_are_not_taken_for_store_problems(
    tmp_path: Path,
) -> None:
    driver = SQLiteDriver(tmp_path / "jobs.db")
    with pytest.raises(sqlite3.OperationalError, match="syntax error"), driver._transaction() as tx:
        tx.conn.execute("SELEC 1")
    with (
        pytest.raises(sqlite3.ProgrammingError, match="number of bindings"),
        driver._transaction() as tx,
    ):
        tx.conn.execute("SELECT ?", ())
    with pytest.raises(JobNotFound):
        driver.cancel([41])
    assert driver.enqueue([EnqueueRequest("task")])[0].job.id == 1  # no transaction left open
    driver.close()


def test_a_store_from_before_retry_policies_upgrades_and_its_jobs_back_off_at_rescue(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for statement in sqlite_schema.MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(
        f"INSERT INTO {sqlite_schema.META_TABLE} (key, value) VALUES ('schema_version', '1')"
    )
    conn.execute(
        "INSERT INTO jobs (task, queue, state, args, kwargs, priority, run_at, attempt,"
        " max_attempts, created_at) VALUES ('old', 'default', 'available', '[]', '{}', 0, 0, 0,"
        " 3, 0)"
    )
    conn.commit()
    conn.close()
    clock = FakeClock()
    driver = SQLiteDriver(path, clock=clock)
    try:
        (job,) = driver.lease(["default"], 1, 30, "w")
        assert job.retry == DEFAULT_RETRY
        assert dict(job.headers) == {}  # and no headers: they came later
        assert driver.list_workers() == []  # the registry came later too, empty
        rescued_at = clock.advance(30)
        assert driver.rescue() == [job.id]
        (stored,) = driver.get([job.id])
        assert stored.state is JobState.RETRYING
        assert stored.run_at == rescued_at + retry_delay(DEFAULT_RETRY, job.id, 1)
    finally:
        driver.close()
