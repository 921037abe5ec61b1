"""The Redis driver (extra ``taskharbor[redis]``): ``redis://host:port/db?prefix=name``."""

from __future__ import annotations

from taskharbor.spec import InvalidRequest

try:
    import redis as _redis  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the Redis driver needs redis-py: pip install 'taskharbor[redis]'") from exc

from .connect import DEFAULT_PREFIX, ServerClock, split_prefix
from .driver import RedisDriver


def open_store(url: str) -> RedisDriver:
    """``redis://`` or ``rediss://`` URL -> a driver on that server; nothing is written."""
    if not isinstance(url, str):
        raise InvalidRequest("a Redis URL must be a string")
    address, prefix = split_prefix(url)
    return RedisDriver(address, prefix=prefix)


__all__ = ["DEFAULT_PREFIX", "RedisDriver", "ServerClock", "open_store"]
