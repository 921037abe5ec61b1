"""Reaching the PostgreSQL server: fail within seconds, naming the server, never the password.

libpq waits for a connection as long as the network lets it (no
``connect_timeout`` by default), and the connection pool waits 30 seconds for
its first connection before it reports only a timeout.  So the driver gives a
connection string that names no ``connect_timeout`` (and no
``PGCONNECT_TIMEOUT`` in the environment) :data:`CONNECT_TIMEOUT_SECONDS`,
and makes one plain connection before it opens its pool: an unreachable
server is a :class:`~taskharbor.spec.errors.StoreError` at once, with the
server's host and port and libpq's own reason.
"""

from __future__ import annotations

import os
import re

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from taskharbor.spec import InvalidRequest, StoreError

CONNECT_TIMEOUT_SECONDS = 5
"""``connect_timeout`` given to a connection string that names none."""


def with_connect_timeout(conninfo: str) -> str:
    """``conninfo`` with ``connect_timeout`` set, unless the user chose one.

    A ``connect_timeout`` in the string (``key=value`` or a URL's query) or in
    ``PGCONNECT_TIMEOUT`` is kept as it is.
    """
    if "connect_timeout" in _parts(conninfo) or os.environ.get("PGCONNECT_TIMEOUT"):
        return conninfo
    return make_conninfo(conninfo, connect_timeout=CONNECT_TIMEOUT_SECONDS)


def server_name(conninfo: str) -> str:
    """``host:port`` of the server ``conninfo`` names (libpq's defaults when it names
    none), with its database and user when given; never the password."""
    parts = _parts(conninfo)
    host = parts.get("host") or os.environ.get("PGHOST") or "localhost"
    port = parts.get("port") or os.environ.get("PGPORT") or "5432"
    extras = [f"{key} {parts[key]}" for key in ("dbname", "user") if parts.get(key)]
    return f"{host}:{port}" + (f" ({', '.join(extras)})" if extras else "")


def check_reachable(conninfo: str) -> None:
    """Open one connection and close it; ``StoreError`` naming the server if that fails."""
    try:
        psycopg.connect(conninfo).close()
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        raise StoreError(
            f"cannot connect to PostgreSQL at {server_name(conninfo)}: {reason}"
        ) from None


def _parts(conninfo: str) -> dict[str, str]:
    try:
        return {key: str(value) for key, value in conninfo_to_dict(conninfo).items()}
    except psycopg.ProgrammingError as exc:
        # psycopg's message may quote any part of the string, the password
        # included: only an unknown option's name is passed on.
        unknown = _UNKNOWN_OPTION.search(str(exc))
        detail = f": unknown option {unknown.group(1)!r}" if unknown else ""
        raise InvalidRequest(
            f"the PostgreSQL connection string cannot be parsed{detail} (a URL "
            "postgresql://user@host:port/dbname or key=value pairs)"
        ) from None


_UNKNOWN_OPTION = re.compile(r'invalid (?:URI query parameter|connection option):? "(\w+)"')
