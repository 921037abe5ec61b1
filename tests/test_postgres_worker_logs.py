"""A PostgreSQL connection reset under a running worker: one log line per failed store
call naming its cause, the traceback only at DEBUG, and the worker carries on."""

from __future__ import annotations

import logging
import re
import uuid

import psycopg
import pytest
from test_engine_support import eventually, running_worker
from test_postgres_support import MakeDriver, make_driver, unique_schema

import taskharbor as th
from driver_registry import POSTGRES_URL
from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.spec import JobState

__all__ = ["make_driver"]

pytestmark = pytest.mark.postgres


def terminate(application: str) -> int:
    """Kill every server session of ``application`` (as a restart or a pooler would)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application,),
        ).fetchall()
    return len(rows)


def test_a_connection_reset_logs_one_line_per_failure_with_its_cause(
    make_driver: MakeDriver, caplog: pytest.LogCaptureFixture
) -> None:
    schema = unique_schema()
    own = th.App(driver=make_driver(schema))  # the test's connections are left alone
    application = f"th_reset_{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    driver = PostgresDriver(f"{POSTGRES_URL}{sep}application_name={application}", schema=schema)
    app = th.App(driver=driver)
    own_task = own.task(name="noop")(lambda: "ok")
    app.task(name="noop")(lambda: "ok")
    try:
        with (
            caplog.at_level(logging.DEBUG),
            caplog.at_level(logging.DEBUG, logger="taskharbor"),  # the CLI tests set its level
            running_worker(app),
        ):
            first = own_task.enqueue()
            eventually(lambda: own.get_job(first).state == JobState.SUCCEEDED, what="a first job")
            assert terminate(application) > 0
            failures = lambda: [  # noqa: E731
                r
                for r in caplog.records
                if r.name == "taskharbor" and r.levelno >= logging.WARNING and "failed" in r.msg
            ]
            eventually(lambda: bool(failures()), what="a store call failing on a reset connection")
            second = own_task.enqueue()
            eventually(lambda: own.get_job(second).state == JobState.SUCCEEDED, what="recovery")
    finally:
        driver.close()
    # Ours only: psycopg's pool logs its own one-line warnings (a discarded connection).
    loud = [r for r in caplog.records if r.levelno >= logging.INFO and r.name == "taskharbor"]
    assert [r.getMessage() for r in loud if r.exc_info or "\n" in r.getMessage()] == []
    for record in failures():
        assert record.levelno == logging.WARNING
        # The cause, as psycopg names it: "AdminShutdown: terminating connection due to ...",
        # then what the worker does next (the registry waits for its next heartbeat).
        then = "(retrying|trying again at the next heartbeat)"
        assert re.search(rf" failed: \w+: \S.*; {then}$", record.getMessage()), record
    traced = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert len(traced) >= len(failures())
