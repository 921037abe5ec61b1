"""The ceiling PostgreSQL itself sets: the driver's own statements issued directly with psycopg.

No TaskHarbor engine, no driver call wrapping, no records built: a loop of
``lease 50`` + ``complete 50`` statements (the very SQL the PostgreSQL driver
runs, rendered for a fresh schema) on two connections, and plain single-row
and 1,000-row INSERTs into the same jobs table.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from common import BULK_BATCH, Stopwatch
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Json

from taskharbor.drivers.postgres import PostgresDriver, statements
from taskharbor.drivers.postgres.tables import Tables
from taskharbor.spec import EnqueueRequest, JobEvent, JobState

LEASE_BATCH = 50
CLIENTS = 2

_VALUES = "'bench.noop', 'default', %(state)s, '[]', '{{}}', 0, now(), 0, 3, now()"
_INTO = (
    "INSERT INTO {jobs} (task, queue, state, args, kwargs, priority, run_at, attempt,"
    " max_attempts, created_at) "
)
_ONE_ROW = _INTO + f"VALUES ({_VALUES})"
_MANY_ROWS = _INTO + f"SELECT {_VALUES} FROM generate_series(1, %(rows)s)"


def _migrated(url: str, schema: str) -> Tables:
    driver = PostgresDriver(url, schema=schema)
    driver.migrate()
    driver.close()
    return Tables(schema)


def lease_complete(url: str, schema: str, jobs: int) -> float:
    """Jobs per second for ``CLIENTS`` connections looping lease 50 + complete 50 (autocommit)."""
    driver = PostgresDriver(url, schema=schema)
    driver.migrate()
    for first in range(0, jobs, BULK_BATCH):
        count = min(BULK_BATCH, jobs - first)
        driver.enqueue([EnqueueRequest("bench.noop") for _ in range(count)])
    driver.close()
    tables = Tables(schema)
    lease = statements.lease(tables, one_queue=True)
    complete = statements.fenced(tables, JobEvent.SUCCEED)

    def client() -> None:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            base: dict[str, Any] = tables.params(None)
            picked = {**base, "queues": ["default"], "limit": LEASE_BATCH}
            picked |= {"seconds": 30.0, "worker": "raw"}
            while rows := conn.execute(lease, picked).fetchall():
                done = {**base, "ids": [row["id"] for row in rows], "by_request": "raw"}
                done |= {"tokens": [row["lease_token"] for row in rows]}
                done["results"] = [Json(None)] * len(rows)
                conn.execute(complete, done).fetchall()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    with Stopwatch(jobs) as watch:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    with psycopg.connect(url) as conn:
        query = sql.SQL("SELECT count(*) FROM {} WHERE state = %s").format(tables.jobs)
        row = conn.execute(query, (JobState.SUCCEEDED.value,)).fetchone()
    if row is None or row[0] != jobs:
        raise RuntimeError(f"raw lease/complete processed {row} of {jobs} jobs")
    return watch.rate


def single_inserts(url: str, schema: str, jobs: int) -> float:
    """Jobs per second, one autocommitted single-row INSERT each."""
    _migrated(url, schema)
    with psycopg.connect(url, autocommit=True) as conn, Stopwatch(jobs) as watch:
        query = sql.SQL(_ONE_ROW).format(jobs=Tables(schema).jobs)
        for _ in range(jobs):
            conn.execute(query, {"state": JobState.AVAILABLE.value})
    return watch.rate


def multi_row_inserts(url: str, schema: str, jobs: int) -> float:
    """Jobs per second, ``BULK_BATCH`` rows per autocommitted INSERT."""
    _migrated(url, schema)
    with psycopg.connect(url, autocommit=True) as conn, Stopwatch(jobs) as watch:
        query = sql.SQL(_MANY_ROWS).format(jobs=Tables(schema).jobs)
        for first in range(0, jobs, BULK_BATCH):
            rows = min(BULK_BATCH, jobs - first)
            conn.execute(query, {"state": JobState.AVAILABLE.value, "rows": rows})
    return watch.rate
