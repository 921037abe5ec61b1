"""The PostgreSQL driver's schema: versioned migrations, refusals, naming, the database clock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from test_postgres_support import MakeDriver, make_driver, unique_schema

from driver_registry import POSTGRES_URL
from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.drivers.postgres import schema as postgres_schema
from taskharbor.drivers.postgres.schema import CURRENT_VERSION, MIGRATIONS, migrate
from taskharbor.spec import (
    DEFAULT_RETRY,
    UNTIL_PRUNED,
    EnqueueRequest,
    FakeClock,
    InvalidRequest,
    JobState,
    KeyScope,
    SchemaError,
    retry_delay,
)

__all__ = ["make_driver"]

pytestmark = pytest.mark.postgres


def applied_versions(schema: str) -> list[int]:
    with psycopg.connect(POSTGRES_URL) as conn:
        query = sql.SQL("SELECT version FROM {} ORDER BY version").format(
            sql.Identifier(schema, "schema_migrations")
        )
        return [row[0] for row in conn.execute(query)]


def test_migrate_is_idempotent(make_driver: MakeDriver) -> None:
    driver = make_driver()
    driver.migrate()
    assert applied_versions(driver._tables.schema) == [m.version for m in MIGRATIONS]
    (result,) = driver.enqueue([EnqueueRequest("t")])
    assert result.created


def test_concurrent_migrations_take_turns(make_driver: MakeDriver) -> None:
    schema = unique_schema()
    make_driver(schema, migrate=False)  # registers the schema for dropping
    outcomes: list[list[int] | BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        try:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                start.wait()
                outcomes.append(migrate(conn, schema))
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(outcome, list) for outcome in outcomes), outcomes
    every = str([m.version for m in MIGRATIONS])
    assert sorted(map(str, outcomes)) == sorted([every, "[]", "[]", "[]"])
    assert applied_versions(schema) == [m.version for m in MIGRATIONS]


def test_a_schema_never_migrated_is_refused_with_the_command_to_run(
    make_driver: MakeDriver,
) -> None:
    driver = make_driver(migrate=False)
    with pytest.raises(SchemaError, match="run `taskharbor migrate`"):
        driver.lease(["default"], 1, 30, "w")


def test_an_out_of_date_schema_is_refused_until_migrated(make_driver: MakeDriver) -> None:
    schema = unique_schema()
    make_driver(schema)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE version = %s").format(
                sql.Identifier(schema, "schema_migrations")
            ),
            (CURRENT_VERSION,),
        )
    late = make_driver(schema, migrate=False)
    with pytest.raises(SchemaError, match=r"out of date .* run `taskharbor migrate`"):
        late.lease(["default"], 1, 30, "w")


def test_a_schema_from_a_newer_release_is_refused(make_driver: MakeDriver) -> None:
    schema = unique_schema()
    make_driver(schema)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (version, description) VALUES (%s, 'future')").format(
                sql.Identifier(schema, "schema_migrations")
            ),
            (CURRENT_VERSION + 1,),
        )
    with pytest.raises(SchemaError, match="newer release"):
        make_driver(schema, migrate=False).count()
    with pytest.raises(SchemaError, match="newer release"):
        make_driver(schema, migrate=False).migrate()


def test_any_schema_name_is_quoted_safely(make_driver: MakeDriver) -> None:
    odd = f'{unique_schema()} "quoted"; DROP'
    driver = make_driver(odd, clock=FakeClock())
    (result,) = driver.enqueue([EnqueueRequest("t", queue="q")])
    assert driver.lease(["q"], 1, 30, "w")[0].id == result.job.id


def test_the_jobs_table_leaves_room_for_updates_in_place(make_driver: MakeDriver) -> None:
    driver = make_driver()
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)",
            (sql.Identifier(driver._tables.schema, "jobs").as_string(None),),
        ).fetchone()
    assert row is not None
    assert "fillfactor=80" in row[0]


def test_without_a_clock_time_is_the_database_clock(make_driver: MakeDriver) -> None:
    driver = make_driver()
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    database_now = row[0]
    assert abs(driver.clock.now() - database_now) < timedelta(seconds=5)
    driver.enqueue([EnqueueRequest("t")])
    (job,) = driver.lease(["default"], 1, 90, "w")
    assert job.lease_expires_at is not None
    assert abs(job.lease_expires_at - job.created_at - timedelta(seconds=90)) < timedelta(seconds=5)
    assert abs(job.created_at - database_now) < timedelta(seconds=5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schema": ""}, "schema must be a non-empty string"),
        ({"schema": "s" * 49}, "at most 48 bytes"),
        ({"pool_size": 0}, "pool_size must be an int >= 1"),
        ({"poll_interval": 0}, "poll_interval must be a positive number"),
    ],
)
def test_bad_driver_options_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        PostgresDriver(POSTGRES_URL, **options)


def test_a_store_from_before_retry_policies_upgrades_and_its_jobs_back_off_at_rescue(
    make_driver: MakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = unique_schema()
    make_driver(schema, migrate=False)  # registers the schema for dropping
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        monkeypatch.setattr(postgres_schema, "MIGRATIONS", MIGRATIONS[:1])
        assert migrate(conn, schema) == [1]
        monkeypatch.undo()
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (task, queue, state, args, kwargs, priority, run_at, attempt,"
                " max_attempts, created_at) VALUES ('old', 'default', 'available', '[]', '{{}}',"
                " 0, now(), 0, 3, now())"
            ).format(sql.Identifier(schema, "jobs"))
        )
    clock = FakeClock(datetime.now(UTC) + timedelta(days=1))
    driver = make_driver(schema, clock=clock)
    assert applied_versions(schema) == [m.version for m in MIGRATIONS]
    (job,) = driver.lease(["default"], 1, 30, "w")
    assert job.retry == DEFAULT_RETRY
    assert dict(job.headers) == {}  # and no headers: they came later
    assert driver.list_workers() == []  # the registry came later too, empty
    rescued_at = clock.advance(30)
    assert driver.rescue() == [job.id]
    (stored,) = driver.get([job.id])
    assert stored.state is JobState.RETRYING
    assert stored.run_at == rescued_at + retry_delay(DEFAULT_RETRY, job.id, 1)


WINDOW = KeyScope.window(60)


def test_a_store_from_before_key_scopes_keeps_its_keys_until_pruned(
    make_driver: MakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = unique_schema()
    make_driver(schema, migrate=False)  # registers the schema for dropping
    before = [m for m in MIGRATIONS if m.description != "scopes of idempotency keys"]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        monkeypatch.setattr(postgres_schema, "MIGRATIONS", tuple(before))
        migrate(conn, schema)
        monkeypatch.undo()
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (task, queue, state, args, kwargs, priority, run_at, attempt,"
                " max_attempts, created_at, idempotency_key, finished_at) VALUES ('old',"
                " 'default', 'succeeded', '[]', '{{}}', 0, now(), 1, 3, now(), 'k', now())"
            ).format(sql.Identifier(schema, "jobs"))
        )
    driver = make_driver(schema, clock=FakeClock(datetime.now(UTC) + timedelta(days=1)))
    assert applied_versions(schema) == [m.version for m in MIGRATIONS]
    (again,) = driver.enqueue([EnqueueRequest("new", idempotency_key="k", key_scope=WINDOW)])
    assert (again.created, again.job.task, again.job.key_scope) == (False, "old", UNTIL_PRUNED)
    (scoped,) = driver.enqueue([EnqueueRequest("new", idempotency_key="j", key_scope=WINDOW)])
    assert (scoped.created, driver.get([scoped.job.id])[0].key_scope) == (True, WINDOW)


@pytest.mark.parametrize(
    ("where", "index"),
    [
        ({"state": "available", "queue": "q1"}, "jobs_queue_state_id_idx"),
        ({"state": "dead"}, "jobs_state_id_idx"),
    ],
)
def test_listing_one_state_reads_its_index_wherever_those_jobs_lie(
    make_driver: MakeDriver, where: dict[str, str], index: str
) -> None:
    """A dead-letter queue behind newer successes, a backlog after older ones: the
    listing in id order reads the (queue, state, id) or (state, id) index, not every
    job by id (the plan PostgreSQL picks when it assumes states are spread evenly)."""
    from taskharbor.drivers.postgres import statements

    driver = make_driver()
    schema = driver._tables.schema
    jobs = sql.Identifier(schema, "jobs")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        # 20,000 finished jobs, the dead ones first, then a backlog: copies of one
        # stored job (every column as the driver writes it).
        (template,) = driver.enqueue([EnqueueRequest("t", queue="q1")])
        columns = [
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = 'jobs' AND column_name NOT IN ('id', 'state')",
                (schema,),
            )
        ]
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        conn.execute(
            sql.SQL(
                "INSERT INTO {jobs} ({names}, state) SELECT {names}, CASE WHEN g <= 200 "
                "THEN 'dead' WHEN g <= 20000 THEN 'succeeded' ELSE 'available' END "
                "FROM {jobs}, generate_series(1, 20100) g WHERE id = %s"
            ).format(jobs=jobs, names=names),
            (template.job.id,),
        )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(jobs))
        query = statements.list_jobs(driver._tables, tuple(where), True)
        plan = "\n".join(
            row[0] for row in conn.execute(b"EXPLAIN " + query, {**where, "limit": 51})
        )
    assert index in plan, plan
