"""``taskharbor schedules``: see the periodic schedules in the store, pause, resume, run, drop.

Every command goes through the driver's schedules calls, so what it changes
(a pause, a resume, a dropped schedule) is in the store, and every worker
obeys it at its next maintenance pass.  With ``--app`` the listing also
knows which stored schedules the application no longer declares (stale:
removed from the code, still stored) and ``drop --stale`` removes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import click
from rich.table import Table

from taskharbor.spec import Driver, JobNotFound, JobRecord
from taskharbor.spec.schedules import ScheduleRecord

from . import render
from .jobs import json_option
from .shapes import dumps, iso, job_shape
from .store import Session, pass_session


@click.group()
def schedules() -> None:
    """Periodic schedules (app.periodic): list, pause, resume, run now, drop."""


def _declared(session: Session, command: str) -> set[str] | None:
    """The names the app declares, with --app; None with --url (staleness unknown)."""
    if session.source.app_path is None:
        return None
    return set(session.app(command).schedules.names)


def _last_jobs(driver: Driver, records: Sequence[ScheduleRecord]) -> dict[int, JobRecord]:
    """The last job of each record that still exists (a pruned one is left out)."""
    found: dict[int, JobRecord] = {}
    for record in records:
        if record.last_job_id is not None:
            with contextlib.suppress(JobNotFound):
                (found[record.last_job_id],) = driver.get([record.last_job_id])
    return found


def _status(record: ScheduleRecord, declared: set[str] | None) -> str:
    if declared is not None and record.name not in declared:
        return "stale"
    return "paused" if record.paused else "active"


def schedule_shape(
    record: ScheduleRecord, last: JobRecord | None, declared: set[str] | None
) -> dict[str, Any]:
    """A schedule for ``--json``: its declaration, its state in the store, its last job."""
    schedule = record.schedule
    return {
        "name": record.name,
        "expression": schedule.expression,
        "cron": schedule.cron,
        "every": schedule.every,
        "tz": schedule.tz,
        "task": schedule.request.task,
        "queue": schedule.request.queue,
        "missed": schedule.missed,
        "paused": record.paused,
        "stale": None if declared is None else record.name not in declared,
        "status": _status(record, declared),
        "next_tick": None if record.paused else iso(record.next_tick()),
        "cursor": iso(record.cursor),
        "last_job_id": record.last_job_id,
        "last_job": None if last is None else {"id": last.id, "state": last.state.value},
    }


def schedules_table(
    records: Sequence[ScheduleRecord], last: dict[int, JobRecord], declared: set[str] | None
) -> Table:
    table = render._listing(
        "NAME", "EXPRESSION", "ZONE", "STATUS", "NEXT TICK (UTC)", "LAST JOB", shrinking=(0, 1)
    )
    for record in records:
        job = last.get(record.last_job_id) if record.last_job_id is not None else None
        if job is not None:
            last_job = f"{job.id} {job.state.value}"
        elif record.last_job_id is not None:
            last_job = f"{record.last_job_id} pruned"
        else:
            last_job = "-"
        status = _status(record, declared)
        table.add_row(
            render._cell(record.name),
            render._cell(record.schedule.expression),
            record.schedule.tz,
            render.state_text(status),
            "-" if record.paused else render.short_time(record.next_tick()),
            last_job,
        )
    return table


@schedules.command("list")
@json_option
@pass_session
def list_schedules(session: Session, as_json: bool) -> None:
    """List the stored schedules: expression, zone, next tick, last job and its state.

    With --app, a schedule the app no longer declares is "stale" (drop it with
    `schedules drop --stale`).  With --json, prints {"schedules": [...]}.
    """
    driver = session.driver()
    records = driver.list_schedules()
    declared = _declared(session, "schedules list")
    last = _last_jobs(driver, records)
    if as_json:
        shapes = [
            schedule_shape(r, last.get(r.last_job_id) if r.last_job_id else None, declared)
            for r in records
        ]
        click.echo(dumps({"schedules": shapes}))
        return
    if not records:
        click.echo("no schedules stored (a worker stores the app's schedules when it starts)")
        return
    render.stdout().print(schedules_table(records, last, declared))


def _pause(session: Session, names: tuple[str, ...], paused: bool, as_json: bool) -> None:
    driver = session.driver()
    records = driver.pause_schedules(list(dict.fromkeys(names)), paused)
    last = _last_jobs(driver, records)
    if as_json:
        shapes = [
            schedule_shape(r, last.get(r.last_job_id) if r.last_job_id else None, None)
            for r in records
        ]
        click.echo(dumps({"schedules": shapes}))
        return
    verb = "paused" if paused else "resumed"
    for record in records:
        click.echo(f"{record.name}: {verb}")


names_argument = click.argument("names", nargs=-1, required=True, metavar="NAME...")


@schedules.command("pause")
@names_argument
@json_option
@pass_session
def pause(session: Session, names: tuple[str, ...], as_json: bool) -> None:
    """Pause schedules: no worker enqueues their ticks until they are resumed
    (ticks that fall meanwhile never run)."""
    _pause(session, names, True, as_json)


@schedules.command("resume")
@names_argument
@json_option
@pass_session
def resume(session: Session, names: tuple[str, ...], as_json: bool) -> None:
    """Resume paused schedules from now: their next tick is the first after now."""
    _pause(session, names, False, as_json)


@schedules.command("run")
@click.argument("name", metavar="NAME")
@json_option
@pass_session
def run(session: Session, name: str, as_json: bool) -> None:
    """Enqueue one job of the schedule now (paused or not); its ticks are unchanged.

    With --json, prints the job.
    """
    job = session.driver().run_schedule(name)
    if as_json:
        click.echo(dumps(job_shape(job)))
    else:
        click.echo(f"{name}: enqueued job {job.id}")


@schedules.command("drop")
@click.argument("names", nargs=-1, metavar="[NAME...]")
@click.option(
    "--stale", is_flag=True, help="Every stored schedule the app no longer declares (needs --app)."
)
@json_option
@pass_session
def drop(session: Session, names: tuple[str, ...], stale: bool, as_json: bool) -> None:
    """Delete stored schedules (their jobs stay): the given NAMEs, or with --stale
    every schedule removed from the app's code.

    A schedule the app still declares comes back, afresh, at the next worker
    pass: drop is for schedules removed from the code.  With --json, prints
    {"dropped": [names]}.
    """
    if bool(names) == stale:
        raise click.UsageError("give schedule names or --stale (one of them)")
    driver = session.driver()
    if stale:
        declared = _declared(session, "schedules drop --stale")
        if declared is None:
            raise click.UsageError("--stale needs --app: only the app knows what it declares")
        chosen = [r.name for r in driver.list_schedules() if r.name not in declared]
    else:
        chosen = list(dict.fromkeys(names))
    if chosen:
        driver.drop_schedules(chosen)
    if as_json:
        click.echo(dumps({"dropped": chosen}))
    elif chosen:
        click.echo(f"dropped {len(chosen)} schedule(s): {', '.join(chosen)}")
    else:
        click.echo("no stale schedules")
