"""Storage URLs: which driver an ``App`` opens for a URL.

Driver modules are imported only when their scheme is used, so an app on the
embedded store never imports the PostgreSQL client.  A scheme the library
does not ship comes from an installed distribution that registers a driver
factory under the entry-point group :data:`ENTRY_POINT_GROUP`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from taskharbor.spec import Driver, InvalidRequest

DEFAULT_URL = "sqlite:///taskharbor.db"
"""The embedded default store: ``./taskharbor.db`` in the working directory."""

SCHEMES = (
    "memory://",
    "sqlite:///<path>",
    "postgresql://...",
    "postgres://...",
    "redis://...",
    "rediss://...",
)

ENTRY_POINT_GROUP = "taskharbor.drivers"
"""Entry points of this group map a URL scheme (the entry point's name, lower
case) to a driver factory: a callable taking the whole URL and returning a
:class:`~taskharbor.spec.Driver`, opened without touching its schema.  The
shipped schemes above cannot be taken over."""


SCHEMA_PARAMETER = "schema"
"""The query parameter of a PostgreSQL URL that names TaskHarbor's schema."""


def open_driver(url: str) -> Driver:
    """The driver a URL names, opened without touching its schema (:func:`driver_opener`,
    called at once)."""
    return driver_opener(url)()


def driver_opener(url: str) -> Callable[[], Driver]:
    """A function that opens the driver a URL names, the URL checked now without any I/O.

    ``memory://`` keeps jobs in this process; ``sqlite:///relative.db`` or
    ``sqlite:////absolute/path.db`` opens a SQLite file; ``postgresql://`` and
    ``postgres://`` URLs go to PostgreSQL as they are, except for an optional
    ``?schema=name`` that picks the schema TaskHarbor's tables live in
    (default ``taskharbor``); ``redis://`` and ``rediss://`` URLs go to Redis
    (extra ``taskharbor[redis]``), with an optional ``?prefix=name`` that picks
    the store's key prefix (default ``taskharbor``).  Any other scheme goes to the factory an
    installed distribution registers for it (:data:`ENTRY_POINT_GROUP`).
    Creating or upgrading the schema is the caller's choice (``driver.migrate()``).
    A malformed URL or an unknown scheme is an ``InvalidRequest`` here; a store
    that cannot be reached fails when the returned function is called.
    """
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"a storage URL must be a non-empty string, not {url!r}")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from taskharbor.drivers.memory import MemoryDriver

        return MemoryDriver
    if scheme == "sqlite":
        prefix = "sqlite:///"
        path = url[len(prefix) :] if url.lower().startswith(prefix) else ""
        if not path:
            raise InvalidRequest(
                f"SQLite URL {url!r} has no file path (write sqlite:///relative.db "
                "or sqlite:////absolute/path.db)"
            )
        from taskharbor.drivers.sqlite import SQLiteDriver

        return lambda: SQLiteDriver(path, migrate=False)
    if scheme in ("postgresql", "postgres"):
        from taskharbor.drivers.postgres import PostgresDriver

        conninfo, schema = split_schema(url)
        if schema is None:
            return lambda: PostgresDriver(conninfo)
        return lambda: PostgresDriver(conninfo, schema=schema)
    if scheme in ("redis", "rediss"):
        from taskharbor.drivers.redis.connect import split_prefix

        split_prefix(url)  # checked now, without importing the client or connecting

        def open_redis() -> Driver:
            from taskharbor.drivers.redis import open_store

            return open_store(url)

        return open_redis
    registered = registered_schemes()
    if scheme in registered:
        points = registered[scheme]
        return lambda: open_registered(url, scheme, points)
    known = [*SCHEMES, *(f"{name}://... (registered)" for name in sorted(registered))]
    raise InvalidRequest(
        # The URL itself is left out of the message: it may hold a password.
        f"unknown storage URL scheme {scheme or '(none)'!r} (use one of: {', '.join(known)}; "
        f"a driver package adds a scheme with an entry point in group {ENTRY_POINT_GROUP!r})"
    )


def registered_schemes() -> dict[str, list[EntryPoint]]:
    """The schemes installed distributions register, each with its entry points."""
    found: dict[str, list[EntryPoint]] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(point.name.lower(), []).append(point)
    return found


def open_registered(url: str, scheme: str, points: list[EntryPoint]) -> Driver:
    """The driver the one factory registered for ``scheme`` opens for ``url``."""
    targets = sorted({point.value for point in points})
    if len(targets) > 1:
        raise InvalidRequest(
            f"URL scheme {scheme!r} is registered by several driver factories "
            f"({', '.join(targets)}): uninstall all but one"
        )
    factory = points[0].load()
    driver = factory(url)
    if not isinstance(driver, Driver):
        raise InvalidRequest(
            f"the driver factory {targets[0]} registered for URL scheme {scheme!r} returned "
            f"{type(driver).__name__}, not a taskharbor.spec.Driver"
        )
    return driver


def split_schema(url: str) -> tuple[str, str | None]:
    """A PostgreSQL URL without its ``schema`` parameter, and that parameter's value."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == SCHEMA_PARAMETER]
    if len(schemas) > 1 or (schemas and not schemas[0]):
        raise InvalidRequest("give at most one non-empty ?schema= in a PostgreSQL URL")
    rest = urlencode([(key, value) for key, value in query if key != SCHEMA_PARAMETER])
    return urlunsplit(parts._replace(query=rest)), (schemas[0] if schemas else None)
