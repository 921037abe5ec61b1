"""Opening a Redis store: its URL, its clock, and what durability its server gives."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from taskharbor.spec import InvalidRequest

logger = logging.getLogger("taskharbor")

DEFAULT_PREFIX = "taskharbor"
PREFIX_PARAMETER = "prefix"
"""The query parameter of a ``redis://`` URL that names the store's key prefix."""


def split_prefix(url: str) -> tuple[str, str]:
    """A ``redis://`` or ``rediss://`` URL without its ``prefix`` parameter, and the prefix."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise InvalidRequest("a Redis URL starts with redis:// or rediss://")
    if not parts.hostname:
        # Never echo the URL: it may hold a password.
        raise InvalidRequest("a Redis URL needs a host (redis://host:port/db)")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for key, value in query if key == PREFIX_PARAMETER]
    if len(prefixes) > 1 or (prefixes and not prefixes[0]):
        raise InvalidRequest("give at most one non-empty ?prefix= in a Redis URL")
    rest = urlencode([(key, value) for key, value in query if key != PREFIX_PARAMETER])
    return urlunsplit(parts._replace(query=rest)), (prefixes[0] if prefixes else DEFAULT_PREFIX)


def key_prefix(prefix: str) -> str:
    """The prefix of every key of a store: one hash tag, so a cluster keeps it in one slot."""
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        raise InvalidRequest(f"a Redis key prefix is a non-empty name without braces: {prefix!r}")
    return "{" + prefix + "}:"


_UNIX = datetime(1970, 1, 1, tzinfo=UTC)


class ServerClock:
    """The Redis server's clock (``TIME``): one clock for every worker, whatever their
    machines say.  The scripts read it themselves; this is for callers outside them."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def now(self) -> datetime:
        seconds, micros = self._client.execute_command("TIME")  # type: ignore[no-untyped-call]
        return _UNIX + timedelta(seconds=int(seconds), microseconds=int(micros))


@dataclass(frozen=True, slots=True)
class Durability:
    """What the server's persistence settings keep when the server crashes."""

    appendonly: bool
    appendfsync: str | None
    save: str | None

    @property
    def persistent(self) -> bool:
        """Only an fsync per write keeps every acknowledged enqueue (spec: persistent)."""
        return self.appendonly and self.appendfsync == "always"

    def describe(self) -> str:
        if self.appendonly and self.appendfsync == "always":
            return "AOF with appendfsync always: every acknowledged call survives a server crash"
        if self.appendonly:
            return (
                f"AOF with appendfsync {self.appendfsync}: a server crash may lose about the "
                "last second of calls (acknowledged enqueues included); not 'persistent'"
            )
        if self.save:
            return (
                f"RDB snapshots only (save {self.save!r}): a server crash loses every call "
                "since the last snapshot; not 'persistent'"
            )
        return "no persistence: a server restart loses every job; not 'persistent'"


def read_durability(client: redis.Redis) -> Durability | None:
    """The server's persistence settings, or None where ``CONFIG`` is refused (managed
    services often rename it)."""
    try:
        config: dict[str, str] = {}
        for name in ("appendonly", "appendfsync", "save"):
            reply = client.execute_command("CONFIG", "GET", name)  # type: ignore[no-untyped-call]
            config.update(
                reply if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
            )
    except redis.ResponseError:
        return None
    return Durability(
        appendonly=config.get("appendonly") == "yes",
        appendfsync=config.get("appendfsync"),
        save=config.get("save") or None,
    )
