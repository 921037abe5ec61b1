"""Opening SQLite files: migrations, and every file the driver must refuse untouched."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.drivers.sqlite_schema import SCHEMA_VERSION, DatabaseFileError
from taskharbor.spec import EnqueueRequest, InvalidRequest, JobFilter, SchemaError

AS_ROOT = os.geteuid() == 0


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
    driver = SQLiteDriver(tmp_path / "later.db", migrate=False)
    with pytest.raises(SchemaError, match=r"schema version 0, older than 1.*taskharbor migrate"):
        driver.count()
    driver.migrate()
    assert driver.count() == {}
    driver.close()


def test_stores_opening_a_new_file_at_once_all_migrate_it(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    errors: list[BaseException] = []

    def open_and_enqueue() -> None:
        try:
            driver = SQLiteDriver(path)
            driver.enqueue([EnqueueRequest("task")])
            driver.close()
        except BaseException as exc:  # reported below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=open_and_enqueue) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
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
            "from taskharbor.drivers.sqlite_schema import DatabaseFileError\n"
            "try:\n"
            f"    SQLiteDriver({str(folder / 'frozen.db')!r})\n"
            "except DatabaseFileError as exc:\n"
            "    print(exc)\n"
        )
        as_other_user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        with untouched(folder):
            done = subprocess.run(
                [*(as_other_user if AS_ROOT else []), sys.executable, "-c", opener],
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert done.returncode == 0, done.stderr
        assert "cannot write" in done.stdout
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
