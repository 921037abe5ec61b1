"""``taskharbor jobs`` and ``dlq``: look at jobs and repair them.

Reading is ``get``/``list_jobs``; repairing is the driver's
``cancel`` and ``requeue`` (the spec's ``cancel`` and ``requeue`` events), so
the store decides, atomically, what each job may do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import click
from rich.table import Table
from rich.text import Text

from taskharbor.spec import (
    Driver,
    InvalidTransition,
    JobFilter,
    JobId,
    JobRecord,
    JobState,
    TaskHarborError,
    WorkflowRecord,
)
from taskharbor.spec.table import JOB, JobEvent

from ..options import check_store_selects_tags
from . import render
from .bulk import in_batches
from .params import JOB_ID, STATE, distinct, since_moment, since_value
from .shapes import dumps, job_list_shape, job_shape
from .store import Session, pass_session

SCAN_PAGE = 1_000
"""Jobs per ``list_jobs`` call when a command has to look through many."""

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def paging_options(noun: str) -> Callable[[Command], Command]:
    """``--after``, ``--before``, ``--newest-first`` and ``--limit`` for a listing of
    ``noun`` (plural), in that order."""
    options = (
        click.option(
            "--after",
            type=click.IntRange(min=0),
            metavar="ID",
            help=f"Only {noun} with a larger id (the next page starts after the last id shown).",
        ),
        click.option(
            "--before",
            type=click.IntRange(min=1),
            metavar="ID",
            help=f"Only {noun} with a smaller id (the next page of --newest-first).",
        ),
        click.option(
            "--newest-first",
            is_flag=True,
            help="Newest (largest id) first; the next page is then --before the last id shown.",
        ),
        click.option(
            "--limit",
            type=click.IntRange(1, 10_000),
            default=50,
            show_default=True,
            metavar="N",
            help=f"At most this many {noun}.",
        ),
    )

    def decorate(command: Command) -> Command:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


Command = TypeVar("Command", bound=Callable[..., Any])
Row = TypeVar("Row", JobRecord, WorkflowRecord)


def page_of(found: Sequence[Row], wanted: int) -> tuple[list[Row], int | None]:
    """The first ``wanted`` of ``found`` (fetched with a limit of ``wanted + 1``), and
    the last id shown when there is more (the next page's --after or --before)."""
    page = list(found[:wanted])
    return page, (page[-1].id if len(found) > wanted else None)


def next_page_hint(next_id: int | None, newest_first: bool) -> Text | None:
    """The option that shows the next page, or None on the last page."""
    if next_id is None:
        return None
    return Text(f"more: add --{'before' if newest_first else 'after'} {next_id}", style="dim")


def scan(driver: Driver, where: JobFilter) -> Iterator[JobRecord]:
    """Every job matching ``where`` (its limit ignored), by ascending id, page by page."""
    after = where.after_id
    while True:
        page = driver.list_jobs(replace(where, after_id=after, limit=SCAN_PAGE))
        yield from page
        if len(page) < SCAN_PAGE:
            return
        after = page[-1].id


def print_jobs_page(
    driver: Driver,
    where: JobFilter,
    as_json: bool,
    table: Callable[[Sequence[JobRecord]], Table] = render.jobs_table,
) -> None:
    """Up to ``where.limit`` jobs as a table (or JSON), with the option that shows
    the next page."""
    found = driver.list_jobs(replace(where, limit=where.limit + 1))
    jobs, next_id = page_of(found, where.limit)
    if as_json:
        click.echo(dumps(job_list_shape(jobs, next_id, where.newest_first)))
        return
    console = render.stdout()
    if not jobs:
        console.print("no jobs match")
        return
    console.print(table(jobs))
    if (hint := next_page_hint(next_id, where.newest_first)) is not None:
        console.print(hint)


@click.group()
def jobs() -> None:
    """List, inspect, cancel and retry jobs."""


@jobs.command("list")
@click.option(
    "--state",
    "states",
    type=STATE,
    multiple=True,
    metavar="STATE",
    help=f"Only jobs in this state (repeat for several): {', '.join(JobState)}.",
)
@click.option("--task", metavar="NAME", help="Only jobs of this task.")
@click.option("--queue", metavar="NAME", help="Only jobs of this queue.")
@click.option("--workflow", type=JOB_ID, metavar="ID", help="Only the steps of this workflow.")
@click.option("--tag", metavar="TAG", help="Only jobs having this tag.")
@click.option(
    "--since",
    metavar="WHEN",
    callback=since_value,
    help="Only jobs created since: a duration ago (30m, 2h, 7d) or an ISO 8601 datetime.",
)
@paging_options("jobs")
@json_option
@pass_session
def list_jobs(
    session: Session,
    states: tuple[str, ...],
    task: str | None,
    queue: str | None,
    workflow: int | None,
    tag: str | None,
    since: timedelta | datetime | None,
    after: int | None,
    before: int | None,
    newest_first: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs by ascending id (newest first with --newest-first), a page at a time."""
    driver = session.driver()
    check_store_selects_tags(driver, tag)
    where = JobFilter(
        states=frozenset(JobState(state) for state in states) or None,
        task=task,
        queue=queue,
        workflow_id=workflow,
        tag=tag,
        after_id=after,
        limit=limit,
        created_since=None if since is None else since_moment(since, driver.clock.now()),
        before_id=before,
        newest_first=newest_first,
    )
    print_jobs_page(driver, where, as_json)


@jobs.command("show")
@click.argument("job_id", type=JOB_ID, metavar="ID")
@json_option
@pass_session
def show_job(session: Session, job_id: int, as_json: bool) -> None:
    """Show one job: payload, attempts with their errors and tracebacks, result,
    lease and workflow."""
    job = session.driver().get([job_id])[0]
    if as_json:
        click.echo(dumps(job_shape(job)))
    else:
        render.stdout().print(render.job_detail(job), crop=False)


def print_changed(jobs: Sequence[JobRecord], as_json: bool) -> None:
    """The jobs a bulk command changed: one line each, or ``{"jobs": [...]}``."""
    if as_json:
        click.echo(dumps({"jobs": [job_shape(job) for job in jobs]}))
        return
    console = render.stdout()
    for job in jobs:
        line = Text(f"job {job.id} {job.task}: ")
        line.append_text(render.state_text(job.state))
        if job.state == JobState.RUNNING and job.cancel_requested:
            line.append(" (cancel requested: its worker stops it at the next heartbeat)")
        console.print(line)


def cancellable_states() -> tuple[list[str], list[str]]:
    """From the spec's table: the states ``cancel`` moves to cancelled at once, and the
    states it only asks to stop (an event out of them ends cancelled when the
    ``cancel_requested`` guard holds)."""
    at_once = sorted(JOB.sources(JobEvent.CANCEL))
    asked = sorted(
        {
            source
            for event in JOB.events
            for source in JOB.states
            for choice in JOB.options(event, source)
            if "cancel_requested" in choice.guards and choice.target == JobState.CANCELLED
        }
    )
    return at_once, asked


class NotCancellable(TaskHarborError):
    """``jobs cancel`` named a job that cancel cannot reach, with what cancel does reach."""

    def __init__(self, refused: InvalidTransition) -> None:
        at_once, asked = cancellable_states()
        super().__init__(
            f"job {refused.subject} is {refused.state}, and cancel works only on "
            f"{', '.join(at_once)} jobs (cancelled at once) and {', '.join(asked)} jobs "
            "(asked to stop: they end cancelled when their worker sees the request)"
        )


def cancel_or_explain(driver: Driver) -> Callable[[Sequence[JobId]], list[JobRecord]]:
    """``driver.cancel``, whose refusal names every state cancel works on (the table's
    own message lists only the states the ``cancel`` event leaves, not ``running``)."""

    def cancel(job_ids: Sequence[JobId]) -> list[JobRecord]:
        try:
            return driver.cancel(job_ids)
        except InvalidTransition as exc:
            raise NotCancellable(exc) from None

    return cancel


@jobs.command("cancel")
@click.argument("job_ids", type=JOB_ID, nargs=-1, required=True, metavar="ID...")
@json_option
@pass_session
def cancel_jobs(session: Session, job_ids: tuple[int, ...], as_json: bool) -> None:
    """Cancel jobs. A waiting job is cancelled at once; a running one is asked to
    stop and ends cancelled when its worker sees the request. A finished job
    cannot be cancelled: then nothing of that batch changes."""
    driver = session.driver()
    print_changed(in_batches(distinct(job_ids), cancel_or_explain(driver), "cancelled"), as_json)


@jobs.command("retry")
@click.argument("job_ids", type=JOB_ID, nargs=-1, required=True, metavar="ID...")
@json_option
@pass_session
def retry_jobs(session: Session, job_ids: tuple[int, ...], as_json: bool) -> None:
    """Put dead or cancelled jobs back in the queue, with their attempts reset
    (their errors are kept). A workflow step's cancelled dependents come back too."""
    driver = session.driver()
    print_changed(in_batches(distinct(job_ids), driver.requeue, "requeued"), as_json)


@click.group()
def dlq() -> None:
    """The dead-letter queue: jobs that used all their attempts or failed permanently."""


@dlq.command("list")
@click.option("--task", metavar="NAME", help="Only dead jobs of this task.")
@click.option("--queue", metavar="NAME", help="Only dead jobs of this queue.")
@paging_options("dead jobs")
@json_option
@pass_session
def list_dead(
    session: Session,
    task: str | None,
    queue: str | None,
    after: int | None,
    before: int | None,
    newest_first: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List dead jobs with their last error."""
    where = JobFilter(
        states=frozenset({JobState.DEAD}),
        task=task,
        queue=queue,
        after_id=after,
        limit=limit,
        before_id=before,
        newest_first=newest_first,
    )
    print_jobs_page(session.driver(), where, as_json, render.dlq_table)


DLQ_ACTIONS: dict[str, tuple[str, str]] = {
    "requeue": ("requeued", "jobs retry also takes cancelled ones"),
    "cancel": ("cancelled", "jobs cancel also takes waiting and running ones"),
}
"""The actions on dead jobs: the word for done, and the command that takes other jobs."""


def dead_selection(
    driver: Driver,
    job_ids: Sequence[JobId],
    task: str | None,
    queue: str | None,
    action: str = "requeue",
) -> list[JobRecord]:
    """The dead jobs a ``dlq requeue`` or ``dlq cancel`` names: the given ids (each must
    be dead, and of ``task`` and ``queue`` if given) or else every dead job (of
    ``task`` and ``queue`` if given)."""
    if not job_ids:
        where = JobFilter(states=frozenset({JobState.DEAD}), task=task, queue=queue)
        return list(scan(driver, where))
    done, other = DLQ_ACTIONS[action]
    selected = driver.get(job_ids)
    for job in selected:
        if job.state != JobState.DEAD:
            raise click.ClickException(
                f"job {job.id} is {job.state}, not dead: dlq {action} takes only dead jobs "
                f"({other}); nothing was {done}"
            )
        if task is not None and job.task != task:
            raise click.ClickException(
                f"job {job.id} is a {job.task} job, not {task}; nothing was {done}"
            )
        if queue is not None and job.queue != queue:
            raise click.ClickException(
                f"job {job.id} is in queue {job.queue}, not {queue}; nothing was {done}"
            )
    return selected


def act_on_dead(
    session: Session,
    action: str,
    *,
    job_ids: tuple[int, ...],
    everything: bool,
    task: str | None,
    queue: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Requeue or cancel the dead jobs selected, in batches (``dlq requeue``, ``dlq cancel``)."""
    if job_ids and everything:
        raise click.UsageError("give job ids or --all, not both")
    if not job_ids and not everything and task is None and queue is None:
        raise click.UsageError("say which dead jobs: job ids, --task NAME, --queue NAME or --all")
    driver = session.driver()
    done = DLQ_ACTIONS[action][0]
    selected = dead_selection(driver, distinct(job_ids), task, queue, action)
    ids = [job.id for job in selected]
    call = driver.requeue if action == "requeue" else driver.cancel
    changed = selected if dry_run or not ids else in_batches(ids, call, done)
    if as_json:
        click.echo(dumps({"jobs": [job_shape(job) for job in changed], "dry_run": dry_run}))
        return
    console = render.stdout()
    if not ids:
        console.print(f"the dead-letter queue has no such job: nothing to {action}")
    elif dry_run:
        console.print(render.dlq_table(selected))
        console.print(f"would {action} {len(ids)} job(s) (dry run: nothing changed)")
    else:
        shown = ", ".join(str(job_id) for job_id in ids[:20])
        console.print(f"{done} {len(ids)} job(s): {shown}{' ...' if len(ids) > 20 else ''}")


def dead_jobs_command(action: str, help_text: str) -> None:
    """Add ``dlq <action>`` (``requeue`` or ``cancel``): the same selection of dead jobs,
    the same options, one action."""
    done = DLQ_ACTIONS[action][0]

    def command(session: Session, **options: Any) -> None:
        act_on_dead(session, action, **options)

    command.__doc__ = help_text
    decorators: list[Callable[[Any], Any]] = [
        dlq.command(action),
        click.argument("job_ids", type=JOB_ID, nargs=-1, metavar="[ID...]"),
        click.option(
            "--all",
            "everything",
            is_flag=True,
            help="Every dead job (of --task and --queue, if given).",
        ),
        click.option("--task", metavar="NAME", help="Only dead jobs of this task."),
        click.option("--queue", metavar="NAME", help="Only dead jobs of this queue."),
        click.option("--dry-run", is_flag=True, help=f"Show what would be {done}; change nothing."),
        json_option,
        pass_session,
    ]
    decorated: Any = command
    for decorator in reversed(decorators):
        decorated = decorator(decorated)


dead_jobs_command(
    "requeue",
    """Put dead jobs back in the queue with their attempts reset: the given IDs,
    or with --all every dead job, or with --task / --queue every dead job of that
    task / queue.

    With --json, prints {"jobs": [...], "dry_run": bool}: the jobs as they are
    after the requeue (as they are now, for a dry run).
    """,
)
dead_jobs_command(
    "cancel",
    """Take dead jobs out of the dead-letter queue for good: they end cancelled, with
    their errors kept (requeue can still bring them back). The given IDs, or with
    --all every dead job, or with --task / --queue every dead job of that task /
    queue. A workflow a dead step failed stays failed.

    With --json, prints {"jobs": [...], "dry_run": bool}: the jobs as they are
    after the cancel (as they are now, for a dry run).
    """,
)
