"""``taskharbor worker``, ``stats``, ``migrate``, ``prune``, ``spec diagram`` and ``demo``."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import cast

import click

from taskharbor.spec import JobFilter, JobState, SchemaError
from taskharbor.spec.diagrams import FORMATS, Format, Lifecycle, render

from . import render as cli_render
from .jobs import json_option, scan
from .params import duration_value
from .shapes import dumps, iso, stats_shape
from .store import Session, pass_session

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


@click.command()
@click.option(
    "-q",
    "--queue",
    "queues",
    multiple=True,
    default=("default",),
    show_default=True,
    help="A queue to work on (repeat for several).",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Jobs run at once.",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds a job stays leased between heartbeats before another worker may rescue it.",
)
@click.option("--burst", is_flag=True, help="Stop once no job is ready, instead of waiting.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="info logs each job's outcome.",
)
@pass_session
def worker(
    session: Session,
    queues: tuple[str, ...],
    concurrency: int,
    lease: float,
    burst: bool,
    log_level: str,
) -> None:
    """Run jobs of the app's tasks (needs --app). Logs each outcome on stderr.

    SIGTERM or Ctrl-C stops leasing and lets running jobs finish (a second
    signal releases them at once); the command then exits with status 0.
    """
    from ..worker import Worker

    app = session.app("worker")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("taskharbor")
    logger.addHandler(handler)
    logger.setLevel(log_level.upper())
    try:
        Worker(app, queues=queues, concurrency=concurrency, lease=lease).run(burst=burst)
    finally:
        logger.removeHandler(handler)


@click.command()
@json_option
@pass_session
def stats(session: Session, as_json: bool) -> None:
    """Count jobs per queue and state, and show how long the oldest ready
    (available) job of each queue has waited."""
    driver = session.driver()
    counts: dict[str, dict[JobState, int]] = {}
    for (queue, state), count in driver.count().items():
        counts.setdefault(queue, {})[JobState(state)] = count
    now = driver.clock.now()
    oldest: dict[str, float] = {}
    # Ready since run_at: the job ready longest is not the lowest id nor the
    # earliest created (a promoted, retried or snoozed job becomes ready after
    # later ones), and list_jobs orders only by id, so every ready job is read.
    for job in scan(driver, JobFilter(states=frozenset({JobState.AVAILABLE}))):
        waited = (now - job.run_at).total_seconds()
        oldest[job.queue] = max(waited, oldest.get(job.queue, waited))
    shape = stats_shape(now, counts, oldest)
    if as_json:
        click.echo(dumps(shape))
    elif not shape["queues"]:
        cli_render.stdout().print("the store holds no jobs")
    else:
        cli_render.stdout().print(cli_render.stats_table(shape))


@click.command()
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing: exit 0 if the schema is current, 1 if a migration is needed.",
)
@pass_session
def migrate(session: Session, check: bool) -> None:
    """Create or upgrade the store's schema (safe to run again, and from several
    machines at once)."""
    driver = session.driver()
    where = session.source.describe()
    if not check:
        driver.migrate()
        click.echo(f"the schema of {where} is up to date")
        return
    try:
        driver.count()
    except SchemaError as exc:
        raise click.ClickException(f"a migration is needed: {exc}") from None
    click.echo(f"the schema of {where} is up to date: no migration needed")


@click.command()
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=duration_value,
    required=True,
    help="Delete jobs finished longer ago than this: 90s, 30m, 12h, 7d, 2w, 1h30m.",
)
@json_option
@pass_session
def prune(session: Session, older_than: timedelta, as_json: bool) -> None:
    """Delete finished jobs (succeeded, dead, cancelled) older than a duration.

    A workflow's steps go only with the whole workflow, once it has succeeded or
    was cancelled. With --json, prints {"pruned": n, "finished_before": time}.
    """
    driver = session.driver()
    cutoff = driver.clock.now() - older_than
    pruned = driver.prune(cutoff)
    if as_json:
        click.echo(dumps({"pruned": pruned, "finished_before": iso(cutoff)}))
    else:
        click.echo(f"pruned {pruned} job(s) finished before {cli_render.short_time(cutoff)} UTC")


@click.group()
def spec() -> None:
    """The contract's state machines."""


@spec.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="mermaid",
    show_default=True,
    help="Mermaid, Graphviz DOT, or a Markdown table of transitions.",
)
@click.option(
    "--lifecycle",
    type=click.Choice(["job", "workflow"]),
    default="job",
    show_default=True,
    help="Which state machine.",
)
def diagram(fmt: str, lifecycle: str) -> None:
    """Print a lifecycle's state diagram, generated from the spec classes."""
    click.echo(render(cast(Lifecycle, lifecycle), cast(Format, fmt)), nl=False)


@click.command()
def demo() -> None:
    """Run the demo: a few jobs and a workflow on ./taskharbor.db, worked in burst
    mode, then a table of what happened (the same as python -m taskharbor.demo)."""
    from ..demo import main as run_demo

    run_demo()
