"""``taskharbor queues``: list the queues, pause and resume them.

A pause is kept by the store, so every worker on every host obeys it at its
next lease, while producers keep enqueueing and due jobs keep becoming ready
(they wait in the queue until it is resumed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from taskharbor.queues import QueueStatus, pause_queues, queue_statuses
from taskharbor.spec import JobState

from . import render
from .jobs import json_option
from .shapes import dumps, iso
from .store import Session, pass_session

_COUNTED = (
    JobState.AVAILABLE,
    JobState.RUNNING,
    JobState.SCHEDULED,
    JobState.RETRYING,
    JobState.DEAD,
)
"""The states the table shows a column for (--json gives every state)."""


@click.group()
def queues() -> None:
    """Queues: list them with their jobs by state, pause and resume them."""


def queue_shape(status: QueueStatus) -> dict[str, Any]:
    """A queue for ``--json``: whether it is paused and since when, and its jobs by state."""
    counts = {state.value: status.counts[state] for state in JobState}
    return {
        "name": status.name,
        "paused": status.paused,
        "paused_at": iso(status.paused_at) if status.paused_at else None,
        "counts": counts,
        "total": sum(counts.values()),
    }


def queues_table(statuses: Sequence[QueueStatus]) -> Table:
    headers = [render._STATE_HEADERS[state].upper() for state in _COUNTED]
    table = render._listing("QUEUE", "STATUS", "PAUSED SINCE (UTC)", *headers, shrinking=(0,))
    for column in table.columns[3:]:
        column.justify = "right"
    for status in statuses:
        table.add_row(
            render._cell(status.name),
            Text("paused", style="bold yellow") if status.paused else Text("active"),
            render.short_time(status.paused_at),
            *(str(status.counts[state]) for state in _COUNTED),
        )
    return table


def _show(statuses: Sequence[QueueStatus], as_json: bool) -> None:
    if as_json:
        click.echo(dumps({"queues": [queue_shape(status) for status in statuses]}))
    else:
        render.stdout().print(queues_table(statuses))


@queues.command("list")
@json_option
@pass_session
def list_queues(session: Session, as_json: bool) -> None:
    """List every queue that holds jobs or is paused: its status and jobs by state.

    With --json, prints {"queues": [{"name", "paused", "paused_at", "counts",
    "total"}]} (counts of every state).
    """
    statuses = queue_statuses(session.driver())
    if not statuses and not as_json:
        click.echo("no queues: the store holds no jobs and no paused queue")
        return
    _show(statuses, as_json)


def _pause(session: Session, names: tuple[str, ...], paused: bool, as_json: bool) -> None:
    driver = session.driver()
    pause_queues(driver, names, paused)
    statuses = queue_statuses(driver, list(dict.fromkeys(names)))
    if as_json:
        _show(statuses, as_json)
        return
    verb = "paused" if paused else "resumed"
    for status in statuses:
        ready = status.counts[JobState.AVAILABLE]
        click.echo(f"{status.name}: {verb} ({ready} job(s) ready)")


names_argument = click.argument("names", nargs=-1, required=True, metavar="QUEUE...")


@queues.command("pause")
@names_argument
@json_option
@pass_session
def pause(session: Session, names: tuple[str, ...], as_json: bool) -> None:
    """Pause queues: every worker stops leasing their jobs at its next poll.

    Enqueueing goes on, and scheduled or retrying jobs that fall due become
    ready; they wait until the queue is resumed.  Running jobs finish as usual.
    With --json, prints the queues as `queues list --json` does.
    """
    _pause(session, names, True, as_json)


@queues.command("resume")
@names_argument
@json_option
@pass_session
def resume(session: Session, names: tuple[str, ...], as_json: bool) -> None:
    """Resume paused queues: workers take their jobs again at their next poll."""
    _pause(session, names, False, as_json)
