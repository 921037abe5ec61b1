"""Shared by the PostgreSQL driver's own tests: drivers on fresh schemas, dropped afterwards.

This module holds no tests; the ``test_postgres_*`` modules import its fixture.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from driver_registry import POSTGRES_URL, skip_without_postgres
from taskharbor.drivers.postgres import PostgresDriver

MakeDriver = Callable[..., PostgresDriver]


def unique_schema() -> str:
    return f"th_test_{uuid.uuid4().hex[:12]}"


def drop_schema(schema: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def make_driver() -> Iterator[MakeDriver]:
    """``make_driver(schema=None, migrate=True, **options)``: a driver on its own schema.

    Every driver made is closed, and every schema used is dropped, after the test.
    """
    skip_without_postgres()
    drivers: list[PostgresDriver] = []
    schemas: set[str] = set()

    def make(schema: str | None = None, *, migrate: bool = True, **options: Any) -> PostgresDriver:
        name = schema or unique_schema()
        schemas.add(name)
        driver = PostgresDriver(POSTGRES_URL, schema=name, **options)
        drivers.append(driver)
        if migrate:
            driver.migrate()
        return driver

    try:
        yield make
    finally:
        for driver in drivers:
            driver.close()
        for name in schemas:
            drop_schema(name)


def copy_job(schema: str, job_id: int, copies: int, **expressions: str) -> None:
    """Store ``copies`` copies of job ``job_id`` of ``schema`` (every column as the driver
    wrote it but the id, and the columns named in ``expressions``: SQL over the copy's
    number ``n``, from 1), then ``VACUUM ANALYZE`` the table, as a plan test needs."""
    jobs = sql.Identifier(schema, "jobs")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        columns = [
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = 'jobs' AND column_name <> 'id'",
                (schema,),
            )
        ]
        values = sql.SQL(", ").join(
            sql.SQL(expressions[c]) if c in expressions else sql.Identifier(c) for c in columns
        )
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        conn.execute(
            sql.SQL(
                "INSERT INTO {jobs} ({names}) SELECT {values} FROM {jobs}, "
                "generate_series(1, %s) n WHERE id = %s"
            ).format(jobs=jobs, names=names, values=values),
            (copies, job_id),
        )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(jobs))
