"""Reaching the PostgreSQL server: an unreachable one fails fast and is named, no password."""

from __future__ import annotations

import inspect
import socket
import time
from collections.abc import Callable

import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

import taskharbor as th
from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.drivers.postgres.connect import (
    CONNECT_TIMEOUT_SECONDS,
    server_name,
    with_connect_timeout,
)
from taskharbor.spec import InvalidRequest, StoreError

POOL_TIMEOUT_SECONDS: float = inspect.signature(ConnectionPool).parameters["timeout"].default
"""How long psycopg's pool waits for a first connection (the driver keeps the default)."""


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def first_use_of_an_app(url: str) -> object:
    """An app opens a store given by URL on first use (here, a read), not when made."""
    return th.App(url).list_jobs()


@pytest.mark.timing
@pytest.mark.parametrize("open_store", [PostgresDriver, first_use_of_an_app], ids=["driver", "app"])
def test_a_closed_port_fails_at_once_naming_the_server_without_the_password(
    open_store: Callable[[str], object],
) -> None:
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(StoreError) as refused:
        open_store(f"postgresql://root:s3cret@127.0.0.1:{port}/test")
    # Refused by the first connect, not after the pool's 30 s wait for a connection.
    assert time.monotonic() - started < POOL_TIMEOUT_SECONDS
    message = str(refused.value)
    assert f"127.0.0.1:{port}" in message and "Connection refused" in message
    assert "s3cret" not in message


def test_a_connect_timeout_is_added_when_none_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    added = conninfo_to_dict(with_connect_timeout("postgresql://root@db.example:6543/jobs"))
    assert added["connect_timeout"] == str(CONNECT_TIMEOUT_SECONDS)
    assert (added["host"], added["port"], added["dbname"]) == ("db.example", "6543", "jobs")


@pytest.mark.parametrize(
    "conninfo",
    ["postgresql://root@db.example/jobs?connect_timeout=60", "host=db.example connect_timeout=60"],
)
def test_a_given_connect_timeout_is_kept(conninfo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    assert with_connect_timeout(conninfo) == conninfo


def test_pgconnect_timeout_in_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "60")
    assert with_connect_timeout("postgresql://root@db.example/jobs") == (
        "postgresql://root@db.example/jobs"
    )


def test_the_server_is_named_by_host_and_port_never_by_password() -> None:
    name = server_name("postgresql://root:s3cret@db.example:6543/jobs")
    assert name == "db.example:6543 (dbname jobs, user root)"


def test_a_connection_string_that_cannot_be_parsed_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidRequest, match="cannot be parsed") as refused:
        with_connect_timeout("host=db password=s3cret nonsense")
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    "conninfo",
    [
        "postgresql://ops:s3cret@db/jobs?no_such_option=1",
        "host=db password=s3cret no_such_option=1",
    ],
)
def test_an_unknown_option_is_named(conninfo: str) -> None:
    with pytest.raises(InvalidRequest, match="unknown option 'no_such_option'") as refused:
        with_connect_timeout(conninfo)
    assert "s3cret" not in str(refused.value)
