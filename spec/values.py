"""Checks of the values a store must give back exactly: JSON and plain text."""

from __future__ import annotations

import math
from typing import Any, TypeAlias

from .errors import InvalidRequest

JSON: TypeAlias = Any
"""A JSON value: None, bool, int, finite float, str, list of JSON, dict of str to JSON."""

JSON_MAX_DEPTH = 64


def check_json(value: JSON, what: str) -> None:
    """Refuse anything that would not come back from storage exactly as given.

    Accepts None, bool, int, finite float, str (valid Unicode), and lists and
    dicts (with str keys) of those, nested at most ``JSON_MAX_DEPTH`` deep.
    Tuples are refused rather than silently turned into lists.

    Depth counts from ``value`` itself (level 0): a job's args are checked as
    one list and its kwargs as one dict, so one argument may be
    ``JSON_MAX_DEPTH - 1`` deep; a result is checked on its own.  The limit
    holds for every stored value alike, so a handler that wraps an accepted
    argument in more levels can return a result past it (``InvalidResult``).
    """
    _check_json(value, what, 0)


def _check_json(value: JSON, path: str, depth: int) -> None:
    if depth > JSON_MAX_DEPTH:
        raise InvalidRequest(f"{path}: nested deeper than {JSON_MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"{path}: {value!r} is not representable in JSON")
        return
    if isinstance(value, str):
        _check_unicode(value, path)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequest(f"{path}: key {key!r} is not a string (JSON keys are)")
            _check_unicode(key, f"{path} key")
            _check_json(item, f"{path}[{key!r}]", depth + 1)
        return
    raise InvalidRequest(
        f"{path}: {type(value).__name__} is not JSON "
        "(use None, bool, int, float, str, list or dict)"
    )


def _check_unicode(text: str, path: str) -> None:
    """Text that encodes to UTF-8 (no lone surrogate).  A NUL character is fine in a
    JSON string: every store keeps it escaped (``\\u0000``) and gives it back exactly."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"{path}: not valid Unicode ({exc.reason})") from None


def _check_text(text: str, path: str) -> None:
    """A name stored as plain text, where a NUL character cannot be kept."""
    _check_unicode(text, path)
    if "\x00" in text:
        raise InvalidRequest(f"{path}: contains a NUL character, which storage cannot keep")
