"""Every driver the test suite runs against, by name: the one place to add a driver.

A factory takes the test's clock and returns a fresh, empty store.  Suites that
run "for every driver" (conformance, model tests, engine tests) parametrise
over :data:`DRIVERS`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from taskharbor.spec import Clock, Driver

POSTGRES_URL = os.environ.get("TASKHARBOR_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("TASKHARBOR_REQUIRE_POSTGRES") == "1"

REDIS_URL = os.environ.get("TASKHARBOR_TEST_REDIS", "redis://127.0.0.1:6379/0")
REQUIRE_REDIS = os.environ.get("TASKHARBOR_REQUIRE_REDIS") == "1"

DriverFactory = Callable[[Clock | None], Driver]
"""Takes the test's clock, or None for the driver's own default clock."""


def postgres_available() -> str | None:
    """None when the test PostgreSQL answers, else the reason it does not."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except Exception as exc:  # any failure to connect means: no PostgreSQL here
        return f"PostgreSQL at {POSTGRES_URL} is not reachable: {exc}"


def skip_without_postgres() -> None:
    """Skip loudly without PostgreSQL, or fail when TASKHARBOR_REQUIRE_POSTGRES=1."""
    reason = postgres_available()
    if reason is None:
        return
    if REQUIRE_POSTGRES:
        pytest.fail(f"TASKHARBOR_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(f"SKIPPED POSTGRES TESTS: {reason}")


def redis_available() -> str | None:
    """None when the test Redis answers, else the reason it does not."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
        return None
    except Exception as exc:  # any failure to connect means: no Redis here
        return f"Redis at {REDIS_URL} is not reachable: {exc}"


def skip_without_redis() -> None:
    """Skip loudly without Redis, or fail when TASKHARBOR_REQUIRE_REDIS=1."""
    reason = redis_available()
    if reason is None:
        return
    if REQUIRE_REDIS:
        pytest.fail(f"TASKHARBOR_REQUIRE_REDIS=1 but {reason}")
    pytest.skip(f"SKIPPED REDIS TESTS: {reason}")


def drop_redis_prefix(prefix: str) -> None:
    """Delete every key of one test store (its keys share the ``{prefix}:`` hash tag)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match="{" + prefix + "}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


@contextmanager
def model_store(tmp: Path) -> Iterator[DriverFactory]:
    from taskharbor.spec.model import ReferenceModel

    yield lambda clock: ReferenceModel(clock=clock)


@contextmanager
def memory_store(tmp: Path) -> Iterator[DriverFactory]:
    from taskharbor.drivers.memory import MemoryDriver

    yield lambda clock: MemoryDriver(clock=clock)


_SQLITE_TEMPLATE: list[Path] = []
"""One migrated, empty SQLite file per test session, copied for each new store: a copy
is the file a fresh migration gives, without its dozen fsynced DDL commits."""


def _sqlite_template() -> Path:
    from taskharbor.drivers.sqlite import SQLiteDriver

    if not _SQLITE_TEMPLATE:
        path = Path(tempfile.mkdtemp(prefix="th_sqlite_template_")) / "empty.db"
        SQLiteDriver(path).close()
        atexit.register(shutil.rmtree, path.parent, ignore_errors=True)
        _SQLITE_TEMPLATE.append(path)
    return _SQLITE_TEMPLATE[0]


@contextmanager
def sqlite_store(tmp: Path) -> Iterator[DriverFactory]:
    from taskharbor.drivers.sqlite import SQLiteDriver

    opened: list[Driver] = []

    def make(clock: Clock | None) -> Driver:
        path = tmp / f"store-{uuid.uuid4().hex}.db"
        shutil.copyfile(_sqlite_template(), path)
        driver = SQLiteDriver(path, clock=clock)
        opened.append(driver)
        return driver

    try:
        yield make
    finally:
        for driver in opened:
            driver.close()


_FREE_SCHEMAS: list[str] = []
"""Test schemas whose store was closed, emptied before a new store takes one: a fresh
schema costs its migrations (dozens of DDL statements and a function) every time."""


def _empty_schema(schema: str) -> None:
    """Truncate every table but the migrations' record and restart every sequence, so the
    schema holds what a fresh migration leaves: no rows, numbering from 1."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        tables = [
            sql.Identifier(schema, name)
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s"
                " AND tablename <> 'schema_migrations'",
                (schema,),
            ).fetchall()
        ]
        if tables:
            conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(sql.SQL(", ").join(tables)))
        sequences = conn.execute(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = %s", (schema,)
        ).fetchall()
        for (name,) in sequences:
            conn.execute(sql.SQL("ALTER SEQUENCE {} RESTART").format(sql.Identifier(schema, name)))


def drop_free_schemas() -> None:
    """Drop the schemas kept for reuse (at the end of the test session)."""
    if not _FREE_SCHEMAS or postgres_available() is not None:
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        while _FREE_SCHEMAS:
            schema = sql.Identifier(_FREE_SCHEMAS.pop())
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))


@contextmanager
def postgres_store(tmp: Path) -> Iterator[DriverFactory]:
    skip_without_postgres()
    from taskharbor.drivers.postgres import PostgresDriver

    class TestStore(PostgresDriver):
        """A store whose schema goes back to the free list once it is closed."""

        def close(self) -> None:
            super().close()
            if self._tables.schema not in _FREE_SCHEMAS:
                _FREE_SCHEMAS.append(self._tables.schema)

    opened: list[Driver] = []

    def make(clock: Clock | None) -> Driver:
        if _FREE_SCHEMAS:
            schema = _FREE_SCHEMAS.pop()
            _empty_schema(schema)
        else:
            schema = f"th_test_{uuid.uuid4().hex[:12]}"
        driver = TestStore(POSTGRES_URL, schema=schema, clock=clock)
        opened.append(driver)
        driver.migrate()
        return driver

    try:
        yield make
    finally:
        for driver in opened:
            driver.close()


@contextmanager
def redis_store(tmp: Path) -> Iterator[DriverFactory]:
    skip_without_redis()
    from taskharbor.drivers.redis import RedisDriver

    opened: list[tuple[Driver, str]] = []

    def make(clock: Clock | None) -> Driver:
        prefix = f"th_test_{uuid.uuid4().hex[:12]}"
        driver = RedisDriver(REDIS_URL, prefix=prefix, clock=clock)
        opened.append((driver, prefix))
        driver.migrate()
        return driver

    try:
        yield make
    finally:
        for driver, prefix in opened:
            driver.close()
            drop_redis_prefix(prefix)


DRIVERS: dict[str, Callable[[Path], AbstractContextManager[DriverFactory]]] = {
    "model": model_store,
    "memory": memory_store,
    "sqlite": sqlite_store,
    "postgres": postgres_store,
    "redis": redis_store,
}
"""Driver name -> a context manager giving a factory of fresh stores."""


# -- hooks into the shipped stores, for the conformance groups that need them -----


def plant_corrupt_sqlite_job(driver: Driver, job_id: int) -> None:
    """Write a ``kwargs`` that is not a JSON object, as a hand edit could."""
    import sqlite3

    from taskharbor.drivers.sqlite import SQLiteDriver

    assert isinstance(driver, SQLiteDriver)
    with sqlite3.connect(driver.path) as conn:
        conn.execute("UPDATE jobs SET kwargs = '[]' WHERE id = ?", (job_id,))
    conn.close()


def plant_corrupt_postgres_job(driver: Driver, job_id: int) -> None:
    """Write ``args`` that are not a JSON list (the schema refuses text that is not JSON)."""
    import psycopg
    from psycopg import sql

    from taskharbor.drivers.postgres import PostgresDriver

    assert isinstance(driver, PostgresDriver)
    table = sql.Identifier(driver._tables.schema, "jobs")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        update = sql.SQL("""UPDATE {} SET args = '{{"n": 1}}' WHERE id = %s""").format(table)
        conn.execute(update, (job_id,))


def fail_next_sqlite_call(driver: Driver) -> None:
    """The next call meets an I/O error of the disk when it opens its connection."""
    import sqlite3

    from taskharbor.drivers.sqlite import SQLiteDriver

    assert isinstance(driver, SQLiteDriver)
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = sqlite3.SQLITE_IOERR  # type: ignore[attr-defined]
    error.sqlite_errorname = "SQLITE_IOERR"  # type: ignore[attr-defined]
    fail_once(driver, "_handle", error)


def fail_next_postgres_call(driver: Driver) -> None:
    """The next call finds its pooled connection closed by the server."""
    import psycopg

    from taskharbor.drivers.postgres import PostgresDriver

    assert isinstance(driver, PostgresDriver)
    error = psycopg.OperationalError("server closed the connection unexpectedly")
    fail_once(driver._pool, "connection", error)


def plant_corrupt_redis_job(driver: Driver, job_id: int) -> None:
    """Write ``args`` that are not a JSON list, as a hand edit could."""
    from taskharbor.drivers.redis import RedisDriver

    assert isinstance(driver, RedisDriver)
    driver._client.hset(f"{driver.prefix}j:{job_id}", "args", '{"n": 1}')


def fail_next_redis_call(driver: Driver) -> None:
    """The next call finds its connection reset by the server, before the script runs."""
    import redis

    from taskharbor.drivers.redis import RedisDriver

    assert isinstance(driver, RedisDriver)
    fail_once(driver, "_script", redis.ConnectionError("Connection reset by peer"))


def fail_once(owner: object, method: str, error: Exception) -> None:
    """Make ``owner.method`` raise ``error`` at its next call, then work again."""
    original = getattr(owner, method)

    def failing(*args: object, **kwargs: object) -> object:
        setattr(owner, method, original)
        raise error

    setattr(owner, method, failing)


PLANT_CORRUPT_JOB: dict[str, Callable[[Driver, int], None]] = {
    "sqlite": plant_corrupt_sqlite_job,
    "postgres": plant_corrupt_postgres_job,
    "redis": plant_corrupt_redis_job,
}
"""Driver name -> the conformance hook that damages a stored job (stores in memory have none)."""

FAIL_NEXT_CALL: dict[str, Callable[[Driver], None]] = {
    "sqlite": fail_next_sqlite_call,
    "postgres": fail_next_postgres_call,
    "redis": fail_next_redis_call,
}
"""Driver name -> the conformance hook that makes the next call fail transiently."""


@contextmanager
def shared_sqlite_store(tmp: Path) -> Iterator[Callable[[], Driver]]:
    """Opens handles on one SQLite file, from any process."""
    from taskharbor.drivers.sqlite import SQLiteDriver

    path = tmp / f"shared-{uuid.uuid4().hex}.db"
    yield lambda: SQLiteDriver(path)


@contextmanager
def shared_postgres_store(tmp: Path) -> Iterator[Callable[[], Driver]]:
    """Opens handles on one PostgreSQL schema, from any process; dropped afterwards."""
    skip_without_postgres()
    import psycopg

    from taskharbor.drivers.postgres import PostgresDriver

    schema = f"th_shared_{uuid.uuid4().hex[:12]}"
    try:
        yield lambda: PostgresDriver(POSTGRES_URL, schema=schema)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def shared_redis_store(tmp: Path) -> Iterator[Callable[[], Driver]]:
    """Opens handles on one Redis key prefix, from any process; deleted afterwards."""
    skip_without_redis()
    from taskharbor.drivers.redis import RedisDriver

    prefix = f"th_shared_{uuid.uuid4().hex[:12]}"

    def open_handle() -> Driver:
        driver = RedisDriver(REDIS_URL, prefix=prefix)
        driver.migrate()
        return driver

    try:
        yield open_handle
    finally:
        drop_redis_prefix(prefix)


SHARED_STORES: dict[str, Callable[[Path], AbstractContextManager[Callable[[], Driver]]]] = {
    "sqlite": shared_sqlite_store,
    "postgres": shared_postgres_store,
    "redis": shared_redis_store,
}
"""Driver name -> openers of one store shared by processes (the process harnesses' hook)."""


@contextmanager
def postgres_caller_transaction(driver: Driver) -> Iterator[object]:
    """An application's own psycopg connection with a transaction open: committed at
    the end of the block, rolled back if it raises."""
    import psycopg

    with psycopg.connect(POSTGRES_URL) as conn:
        yield conn


@contextmanager
def sqlite_caller_transaction(driver: Driver) -> Iterator[object]:
    """An application's own sqlite3 connection to the store's file, in a transaction:
    committed at the end of the block, rolled back if it raises."""
    import sqlite3

    from taskharbor.drivers.sqlite import SQLiteDriver

    assert isinstance(driver, SQLiteDriver)
    conn = sqlite3.connect(driver.path)
    try:
        with conn:  # commits, or rolls back on an exception
            conn.execute("BEGIN IMMEDIATE")
            yield conn
    finally:
        conn.close()


CALLER_TRANSACTION: dict[str, Callable[[Driver], AbstractContextManager[object]]] = {
    "postgres": postgres_caller_transaction,
    "sqlite": sqlite_caller_transaction,
}
"""Driver name -> the transactional-enqueue rules' hook (drivers with the capability)."""
