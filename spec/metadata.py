"""What a job carries for people rather than for its handler: tags, meta and progress.

* ``tags``: a few short labels given at enqueue (``EnqueueRequest.tags``), kept for
  the job's life and returned in ``JobRecord.tags``; ``list_jobs`` selects the jobs
  having one (``JobFilter.tag``).  At most :data:`TAGS_MAX_ITEMS`, each a non-empty
  string of at most :data:`TAG_MAX_LENGTH` characters without NUL, no repeats; kept
  in the order given.
* ``meta``: a small JSON object given at enqueue (``EnqueueRequest.meta``), kept as
  given and returned in ``JobRecord.meta``: at most :data:`META_MAX_BYTES` bytes as
  compact UTF-8 JSON.  The store never interprets it.
* ``progress``: how far the running attempt says it is (:class:`Progress`), carried
  by the lease heartbeat (``LeaseRef.progress``) and therefore fenced like it: a
  stale lease's progress is refused with the rest of its heartbeat.  ``lease``
  clears it (a new attempt starts from nothing); every other event keeps it, so a
  finished job shows how far its last attempt got.

A store keeps all three when it declares the ``job_metadata`` capability; the
engine gives a store without it none of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest
from .values import _check_text, check_json

TAGS_MAX_ITEMS = 16
TAG_MAX_LENGTH = 64
META_MAX_BYTES = 4096
PROGRESS_MESSAGE_MAX_LENGTH = 256
"""Bounds of a job's tags (16 tags of at most 64 characters), its meta (4 KiB of
compact JSON) and a progress message (256 characters)."""


def check_tags(value: object, what: str = "tags") -> tuple[str, ...]:
    """A job's tags as a tuple: a list or tuple (not a str) of at most
    :data:`TAGS_MAX_ITEMS` distinct non-empty strings of at most
    :data:`TAG_MAX_LENGTH` characters, without NUL."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidRequest(f"{what} must be a list of strings, not {type(value).__name__}")
    if len(value) > TAGS_MAX_ITEMS:
        raise InvalidRequest(f"{what}: {len(value)} tags, at most {TAGS_MAX_ITEMS} allowed")
    for tag in value:
        check_tag(tag, f"{what} item")
    if len(set(value)) != len(value):
        raise InvalidRequest(f"{what}: a tag is given twice in {list(value)!r}")
    return tuple(value)


def check_tag(value: object, what: str = "tag") -> None:
    """One tag: a non-empty str of at most :data:`TAG_MAX_LENGTH` characters, no NUL,
    valid Unicode."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what} must be a non-empty string, not {value!r}")
    if len(value) > TAG_MAX_LENGTH:
        raise InvalidRequest(f"{what} {value[:20]!r}... is longer than {TAG_MAX_LENGTH} characters")
    _check_text(value, f"{what} {value!r}")


def check_meta(value: object, what: str = "meta") -> None:
    """A job's meta: a JSON object (str keys, JSON values) of at most
    :data:`META_MAX_BYTES` bytes as compact UTF-8 JSON."""
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{what} must be a JSON object (a dict), not {type(value).__name__}")
    check_json(dict(value), what)
    size = len(meta_text(value).encode("utf-8"))
    if size > META_MAX_BYTES:
        raise InvalidRequest(f"{what} is {size} bytes of JSON, at most {META_MAX_BYTES} allowed")


def meta_text(value: Mapping[str, Any]) -> str:
    """The compact JSON text of a meta object, the form its size limit counts."""
    return json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a running attempt says it is.

    ``value`` is the fraction done, a number from 0.0 to 1.0 (shown as a
    percentage); a count belongs in ``message`` ("420 of 1000 rows").  ``message``
    is optional text of at most :data:`PROGRESS_MESSAGE_MAX_LENGTH` characters.
    """

    value: float
    message: str | None = None

    def __post_init__(self) -> None:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"progress must be a number from 0 to 1, not {value!r}")
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise InvalidRequest(f"progress must be a number from 0 to 1, not {value!r}")
        object.__setattr__(self, "value", float(value))
        if self.message is not None:
            if not isinstance(self.message, str):
                raise InvalidRequest(
                    f"progress message must be a str, not {type(self.message).__name__}"
                )
            if len(self.message) > PROGRESS_MESSAGE_MAX_LENGTH:
                raise InvalidRequest(
                    f"progress message is longer than {PROGRESS_MESSAGE_MAX_LENGTH} characters"
                )
            _check_text(self.message, "progress message")
