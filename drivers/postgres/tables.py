"""Where the PostgreSQL driver's tables live, and the clock its statements read."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Concatenate, ParamSpec

from psycopg import sql

from taskharbor.spec import InvalidRequest

from .transitions import STATE_PARAMS

SCHEMA_NAME_MAX = 48
"""Schema names are identifiers (63 bytes at most); room is left for the channel name."""


@dataclass(frozen=True)
class Tables:
    """The qualified names of one schema's tables, and the pieces every statement shares.

    ``now`` is the statement's clock: the ``%(now)s`` parameter when the driver
    was given a clock, else the database's transaction time, so every
    timestamp of one call is the same instant and worker clocks never matter.
    """

    schema: str
    jobs: sql.Identifier = field(init=False, compare=False)
    workflows: sql.Identifier = field(init=False, compare=False)
    now: sql.Composed = field(init=False, compare=False)
    rendered: dict[Hashable, bytes] = field(init=False, compare=False, default_factory=dict)
    """Statements already built for this schema (see :func:`statement`)."""
    shared: dict[str, Any] = field(init=False, compare=False)
    """The parameters every call passes (see :meth:`params`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.schema, str) or not self.schema:
            raise InvalidRequest(f"schema must be a non-empty string, not {self.schema!r}")
        if len(self.schema.encode()) > SCHEMA_NAME_MAX or "\x00" in self.schema:
            raise InvalidRequest(
                f"schema name {self.schema!r} must be at most {SCHEMA_NAME_MAX} bytes, without NUL"
            )
        object.__setattr__(self, "jobs", sql.Identifier(self.schema, "jobs"))
        object.__setattr__(self, "workflows", sql.Identifier(self.schema, "workflows"))
        now = sql.SQL("COALESCE({}::timestamptz, now())").format(sql.Placeholder("now"))
        object.__setattr__(self, "now", now)
        shared = {
            **STATE_PARAMS,
            "job_ids": sql.Identifier(self.schema, "job_ids").as_string(None),
            "workflow_ids": sql.Identifier(self.schema, "workflow_ids").as_string(None),
        }
        object.__setattr__(self, "shared", shared)

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel on which enqueues into this schema are announced."""
        return f"taskharbor_{self.schema}"

    @property
    def finished_channel(self) -> str:
        """The channel on which calls that finish jobs send their notice
        (:mod:`taskharbor.drivers.finished_watches`)."""
        return f"th_finished_{self.schema}"

    def sql(self, template: str, **parts: sql.Composable) -> sql.Composed:
        """``template`` with ``{jobs}``, ``{workflows}``, ``{now}`` and ``parts`` filled in."""
        return sql.SQL(template).format(
            jobs=self.jobs, workflows=self.workflows, now=self.now, **parts
        )

    def params(self, now: datetime | None) -> dict[str, Any]:
        """The parameters every statement may use: the clock, the sequences, the states."""
        return {**self.shared, "now": now}


P = ParamSpec("P")


def statement(
    build: Callable[Concatenate[Tables, P], sql.Composed],
) -> Callable[Concatenate[Tables, P], bytes]:
    """Build a statement once per schema and arguments; later calls reuse its bytes.

    Composing and rendering a statement costs more than a round trip on a
    fast network; rendered bytes also let psycopg reuse its parse of the
    placeholders.
    """

    def cached(tables: Tables, /, *args: P.args, **kwargs: P.kwargs) -> bytes:
        key = (build.__module__, build.__qualname__, args, tuple(sorted(kwargs.items())))
        found = tables.rendered.get(key)
        if found is None:
            found = tables.rendered[key] = build(tables, *args, **kwargs).as_bytes(None)
        return found

    cached.__doc__ = build.__doc__
    cached.__name__ = build.__name__
    return cached
