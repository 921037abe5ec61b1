"""Command-line value types of the CLI: durations, points in time, job ids, states."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from taskharbor.spec import InvalidRequest, JobState

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """``90`` (seconds), ``45s``, ``15m``, ``12h``, ``7d``, ``2w``, or a sum like ``1h30m``."""
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
        return timedelta(seconds=float(cleaned))
    if not cleaned or _DURATION_PART.sub("", cleaned):
        raise ValueError(
            f"{text!r} is not a duration (write e.g. 90, 45s, 15m, 12h, 7d, 2w or 1h30m)"
        )
    seconds = sum(
        float(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(cleaned)
    )
    return timedelta(seconds=seconds)


def duration_value(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> timedelta | None:
    """Option callback: a duration such as ``7d`` or ``1h30m`` (see :func:`parse_duration`)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def span_value(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """Option callback: a duration that must say its unit (``3`` alone is refused: seconds or
    days?), such as ``3s``, ``10m``, ``7d`` or ``1h30m``."""
    if value is None:
        return None
    if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", value):
        number = value.strip()
        raise click.BadParameter(
            f"{value!r} has no unit: write {number}s, {number}m, {number}h, {number}d or {number}w",
            ctx,
            param,
        )
    return duration_value(ctx, param, value)


def since_value(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> timedelta | datetime | None:
    """Option callback: a duration ago (``2h``: two hours before the store's now) or an
    ISO 8601 datetime (``2030-01-31T12:00:00+00:00``; without an offset it is UTC)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration (e.g. 2h, 7d) "
            "nor an ISO 8601 datetime (e.g. 2030-01-31T12:00:00)",
            ctx,
            param,
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def since_moment(since: timedelta | datetime, now: datetime) -> datetime:
    """The moment a ``--since`` value names, relative to the store's ``now``."""
    if isinstance(since, datetime):
        return since
    try:
        return now - since
    except OverflowError:
        raise InvalidRequest(
            f"--since reaches back {since.days:,} days, before the first date there is (year 1)"
        ) from None


SECONDS = click.FloatRange(min=0, min_open=True)
"""A positive number of seconds."""

JOB_ID = click.IntRange(min=1)
"""A job or workflow id: a positive int."""

STATE = click.Choice([state.value for state in JobState], case_sensitive=False)
"""A job state, as ``jobs list --state`` takes it."""


def distinct(ids: tuple[int, ...]) -> list[int]:
    """The ids in the order given, each once (the SPI refuses a batch naming a job twice)."""
    return list(dict.fromkeys(ids))
