"""What the CLI shows people: Rich tables, trees and detail views that fit 80 columns.

Everything that comes from the store (task names, payloads, error messages) is
wrapped in :class:`rich.text.Text`, never parsed as Rich markup, so a
``[bold]`` inside a payload is shown as written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from taskharbor.spec import JobRecord, JobState, WorkflowRecord, WorkflowState
from taskharbor.spec.keys import key_window

from ..jobs import progress_label

STATE_STYLES: Mapping[str, str] = {
    JobState.PENDING: "dim",
    JobState.SCHEDULED: "cyan",
    JobState.AVAILABLE: "blue",
    JobState.RUNNING: "yellow",
    JobState.RETRYING: "magenta",
    JobState.SUCCEEDED: "green",
    JobState.DEAD: "bold red",
    JobState.CANCELLED: "red",
    WorkflowState.FAILED: "bold red",
}
"""Colour of each job and workflow state (the ones they share have one colour)."""

_STATE_HEADERS: Mapping[JobState, str] = {
    JobState.PENDING: "pend",
    JobState.SCHEDULED: "sched",
    JobState.AVAILABLE: "avail",
    JobState.RUNNING: "run",
    JobState.RETRYING: "retry",
    JobState.SUCCEEDED: "ok",
    JobState.DEAD: "dead",
    JobState.CANCELLED: "cancel",
}
"""Short state names for the ``stats`` columns, so that every state fits in 80 columns."""


def stdout() -> Console:
    """A console on the current standard output (tests swap it)."""
    return Console(highlight=False, soft_wrap=False)


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def short_time(moment: datetime | None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC (the --json output keeps the full precision)."""
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def age(seconds: float | None) -> str:
    """A duration the way people read it: ``45s``, ``12m 05s``, ``3h 20m``, ``2d 4h``."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _listing(*columns: str, shrinking: Sequence[int]) -> Table:
    """A one-line-per-row listing: the columns at ``shrinking`` (free text such as task
    names and errors) give up width when the table is too wide, and their cells
    (made with :func:`_cell`) end in an ellipsis instead of wrapping; the others
    (ids, states, times) keep their full width."""
    table = _table(*columns)
    for index, column in enumerate(table.columns):
        column.no_wrap = index not in shrinking
    return table


def _cell(text: str) -> Text:
    """Free text in a listing: one line, cut with an ellipsis when its column is narrower."""
    return Text(" ".join(text.split()), no_wrap=True, overflow="ellipsis")


def jobs_table(jobs: Sequence[JobRecord]) -> Table:
    """One row per job: id, state, task, queue, attempts, when it is (or was) due."""
    table = _listing("ID", "STATE", "TASK", "QUEUE", "TRIES", "RUN AT (UTC)", shrinking=(2, 3))
    table.columns[0].justify = "right"
    for job in jobs:
        table.add_row(
            str(job.id),
            state_text(job.state),
            _cell(job.task),
            _cell(job.queue),
            f"{job.attempt}/{job.max_attempts}",
            short_time(job.run_at),
        )
    return table


def dlq_table(jobs: Sequence[JobRecord]) -> Table:
    """One row per dead job: id, task, queue, when it died, and its last error."""
    table = _listing("ID", "TASK", "QUEUE", "DIED (UTC)", "LAST ERROR", shrinking=(1, 2, 4))
    table.columns[0].justify = "right"
    for job in jobs:
        last = job.errors[-1] if job.errors else None
        error = _cell(f"{last.type}: {last.message}" if last else "-")
        table.add_row(
            str(job.id), _cell(job.task), _cell(job.queue), short_time(job.finished_at), error
        )
    return table


def workflows_table(workflows: Sequence[WorkflowRecord]) -> Table:
    """One row per workflow: id, name, state, steps, when it was created and finished."""
    table = _listing(
        "ID", "NAME", "STATE", "STEPS", "CREATED (UTC)", "FINISHED (UTC)", shrinking=(1,)
    )
    table.columns[0].justify = "right"
    table.columns[3].justify = "right"
    for workflow in workflows:
        table.add_row(
            str(workflow.id),
            _cell(workflow.name or "-"),
            state_text(workflow.state),
            str(len(workflow.steps)),
            short_time(workflow.created_at),
            short_time(workflow.finished_at),
        )
    return table


def _pretty(value: Any) -> Text:
    """JSON on one line when it fits, else indented."""
    flat = json.dumps(value, ensure_ascii=False)
    return Text(flat if len(flat) <= 72 else json.dumps(value, indent=2, ensure_ascii=False))


SHOWN_DEPENDENCIES = 6
"""How many dependency ids a step's line names before it summarises (a wide chord's
callback may wait for thousands)."""


def dependencies(job_ids: Sequence[int]) -> str:
    """``12, 13, 14`` or, for many, ``12, 13, 14, … 51 (40 steps)``."""
    if len(job_ids) <= SHOWN_DEPENDENCIES:
        return ", ".join(str(job_id) for job_id in job_ids)
    first = ", ".join(str(job_id) for job_id in job_ids[: SHOWN_DEPENDENCIES - 1])
    return f"{first}, … {job_ids[-1]} ({len(job_ids)} steps)"


def key_scope_text(job: JobRecord) -> str:
    """How long a job holds its idempotency key, in words (a window with its end)."""
    window = key_window(job.key_scope)
    if window is None:
        return str(job.key_scope)
    return f"{job.key_scope} from enqueue, until {short_time(job.created_at + window)}"


def job_detail(job: JobRecord) -> RenderableType:
    """Everything about one job: fields, payload, result, lease, workflow, each error."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column(overflow="fold")
    rows: list[tuple[str, Text | str]] = [
        ("job", str(job.id)),
        ("task", Text(job.task)),
        ("queue", Text(job.queue)),
        ("state", state_text(job.state)),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("created", short_time(job.created_at)),
        ("run at", short_time(job.run_at)),
        ("finished", short_time(job.finished_at)),
    ]
    if job.reason is not None:
        rows.append(("reason", Text(job.reason)))
    if job.idempotency_key is not None:
        rows.append(("idempotency key", Text(job.idempotency_key)))
        rows.append(("key held", key_scope_text(job)))
    if job.state == JobState.RUNNING:
        lease = f"held by {job.leased_by}, expires {short_time(job.lease_expires_at)}"
        if job.cancel_requested:
            lease += " (cancel requested)"
        rows.append(("lease", Text(lease)))
    if job.workflow_id is not None:
        after = dependencies(job.depends_on) or "nothing"
        rows.append(("workflow", f"{job.workflow_id} (this step waits for: {after})"))
    if job.tags:
        rows.append(("tags", Text(", ".join(job.tags))))
    if job.progress is not None:
        rows.append(("progress", Text(progress_label(job.progress))))
    for name, value in rows:
        fields.add_row(name, value)
    parts: list[RenderableType] = [fields, Text("\nargs", style="bold"), _pretty(list(job.args))]
    if job.kwargs:
        parts += [Text("kwargs", style="bold"), _pretty(dict(job.kwargs))]
    if job.headers:
        parts += [Text("headers", style="bold"), _pretty(dict(job.headers))]
    if job.meta:
        parts += [Text("meta", style="bold"), _pretty(dict(job.meta))]
    if job.state == JobState.SUCCEEDED:
        parts += [Text("result", style="bold"), _pretty(job.result)]
    parts.append(Text(f"errors ({len(job.errors)})", style="bold"))
    for error in job.errors:
        heading = f"attempt {error.attempt} at {short_time(error.at)}: {error.type}: "
        parts.append(Text(heading + error.message, style="red"))
        if error.traceback:
            # Whole lines, however long: a traceback line cut at the width is
            # hard to read and impossible to search for; the terminal may wrap it.
            traceback = error.traceback.rstrip()
            parts.append(Text(traceback, style="dim", no_wrap=True, overflow="ignore"))
    return Group(*parts)


def workflow_tree(workflow: WorkflowRecord, steps: Sequence[JobRecord], result: Any = None) -> Tree:
    """The steps as a tree: a step that waits for exactly one step hangs under it;
    steps that wait for none or for several (a chord's callback) sit at the top,
    each naming what it waits for.  A succeeded workflow's ``result`` is in its title."""
    title = Text(f"workflow {workflow.id}")
    if workflow.name:
        title.append(f" {workflow.name}")
    title.append("  ")
    title.append_text(state_text(workflow.state))
    if workflow.state == WorkflowState.SUCCEEDED:
        title.append("  result: ")
        title.append_text(_pretty(result))
    tree = Tree(title)
    nodes: dict[int, Tree] = {}
    for step in steps:
        label = Text(f"job {step.id} ")
        label.append(step.task)
        label.append("  ")
        label.append_text(state_text(step.state))
        if len(step.depends_on) > 1:
            label.append(f"  after {dependencies(step.depends_on)}", "dim")
        if step.reason:
            label.append(f"  ({step.reason})", "dim")
        parent = nodes.get(step.depends_on[0]) if len(step.depends_on) == 1 else None
        nodes[step.id] = (parent or tree).add(label)
    return tree


def stats_table(shape: Mapping[str, Any]) -> Table:
    """Per queue: a count for each state, and the age of the oldest ready job."""
    table = _table("QUEUE", *_STATE_HEADERS.values(), "OLDEST READY")
    for column in table.columns[1:-1]:
        column.justify = "right"
    queues: Mapping[str, Any] = shape["queues"]
    for queue, info in queues.items():
        counts = [str(info["counts"][state.value]) for state in _STATE_HEADERS]
        table.add_row(Text(queue), *counts, age(info["oldest_ready_age_seconds"]))
    if len(queues) > 1:
        totals = [str(shape["totals"][state.value]) for state in _STATE_HEADERS]
        table.add_row(Text("(all)", style="bold"), *totals, "")
    return table
