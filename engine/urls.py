"""Storage URLs: which driver an ``App`` opens for a URL.

Driver modules are imported only when their scheme is used, so an app on the
embedded store never imports the PostgreSQL client.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from taskharbor.spec import Driver, InvalidRequest

DEFAULT_URL = "sqlite:///taskharbor.db"
"""The embedded default store: ``./taskharbor.db`` in the working directory."""

SCHEMES = ("memory://", "sqlite:///<path>", "postgresql://...", "postgres://...")


def open_driver(url: str) -> Driver:
    """The driver a URL names.

    ``memory://`` keeps jobs in this process; ``sqlite:///relative.db`` or
    ``sqlite:////absolute/path.db`` opens a SQLite file; ``postgresql://`` and
    ``postgres://`` URLs are passed to PostgreSQL as they are.
    """
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"a storage URL must be a non-empty string, not {url!r}")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from taskharbor.drivers.memory import MemoryDriver

        return MemoryDriver()
    if scheme == "sqlite":
        prefix = "sqlite:///"
        path = url[len(prefix) :] if url.lower().startswith(prefix) else ""
        if not path:
            raise InvalidRequest(
                f"SQLite URL {url!r} has no file path (write sqlite:///relative.db "
                "or sqlite:////absolute/path.db)"
            )
        from taskharbor.drivers.sqlite import SQLiteDriver

        return SQLiteDriver(path)
    if scheme in ("postgresql", "postgres"):
        from taskharbor.drivers.postgres import PostgresDriver

        return PostgresDriver(url)
    raise InvalidRequest(
        # The URL itself is left out of the message: it may hold a password.
        f"unknown storage URL scheme {scheme or '(none)'!r} (use one of: {', '.join(SCHEMES)})"
    )
