"""``taskharbor worker``, ``stats``, ``migrate``, ``prune``, ``spec diagram`` and ``demo``."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

import click
from click.core import ParameterSource

from taskharbor.spec import JobFilter, JobState, SchemaError
from taskharbor.spec.diagrams import FORMATS, Format, Lifecycle, render
from taskharbor.spec.records import PRUNED_BY_DEFAULT

from ..execution import FIELDS
from ..fairness import MAX_WEIGHT
from . import render as cli_render
from .jobs import json_option, scan
from .params import SECONDS, span_value
from .shapes import dumps, iso, lifecycle_shape, stats_shape
from .store import Session, pass_session

if TYPE_CHECKING:
    from ..app import App
    from ..contrib.prometheus import Metrics
    from ..worker import Worker

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
    "--weight",
    "weights",
    multiple=True,
    metavar="QUEUE=N",
    help="A queue's share of the free slots when several queues have jobs ready "
    "(repeat; 1 each by default): --weight mail=3 gives mail three slots for each "
    "one of a queue of weight 1.",
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
@click.option(
    "--heartbeat-interval",
    type=SECONDS,
    metavar="SECONDS",
    help="Seconds between heartbeats that extend the leases.  [default: a third of --lease]",
)
@click.option(
    "--poll-interval",
    type=SECONDS,
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds to wait before asking for jobs again when none was ready "
    "(a store with notifications wakes the worker sooner).",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds running jobs get to finish after SIGTERM or Ctrl-C before they are released.",
)
@click.option(
    "--retention",
    metavar="DURATION",
    default="7d",
    show_default=True,
    callback=span_value,
    help="Prune succeeded and cancelled jobs finished longer ago than this (dead jobs stay "
    "until requeued or pruned with `taskharbor prune --dead`).",
)
@click.option(
    "--keep-finished",
    is_flag=True,
    help="Never prune: keep every finished job (overrides --retention).",
)
@click.option("--burst", is_flag=True, help="Stop once no job is ready, instead of waiting.")
@click.option(
    "--periodic/--no-periodic",
    default=True,
    show_default=True,
    help="Enqueue the due ticks of the app's periodic schedules (one job per tick, "
    "however many workers do).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="info logs each job's outcome.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    default="text",
    show_default=True,
    help="json: one JSON object per line, each attempt's outcome with its fields "
    "(job id, task, queue, attempt, outcome, duration, error) named as the tracing "
    "integration names its span attributes.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    metavar="PORT",
    help="Serve Prometheus metrics on http://ADDR:PORT/metrics (9464 is the usual port; "
    "0 picks a free one and logs it); needs taskharbor[prometheus].",
)
@click.option(
    "--metrics-addr",
    default="0.0.0.0",
    show_default=True,
    metavar="ADDR",
    help="The address --metrics-port listens on.",
)
@json_option
@pass_session
def worker(
    session: Session,
    queues: tuple[str, ...],
    weights: tuple[str, ...],
    concurrency: int,
    lease: float,
    heartbeat_interval: float | None,
    poll_interval: float,
    shutdown_timeout: float,
    retention: timedelta,
    keep_finished: bool,
    burst: bool,
    periodic: bool,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_addr: str,
    as_json: bool,
) -> None:
    """Run jobs of the app's tasks (needs --app). Logs each outcome on stderr.

    SIGTERM or Ctrl-C stops leasing and lets running jobs finish (a second
    signal releases them at once); the command then exits with status 0.

    With --json, each log line is a JSON object (as with --log-format json),
    and stdout gets one JSON line when the worker starts (its id and settings)
    and one when it stops.
    """
    from ..worker import Worker

    app = session.app("worker")
    runner = Worker(
        app,
        queues=_weighted(queues, weights),
        concurrency=concurrency,
        lease=lease,
        heartbeat_interval=heartbeat_interval,
        poll_interval=poll_interval,
        shutdown_timeout=shutdown_timeout,
        retention=None if keep_finished else retention.total_seconds(),
        periodic=periodic,
    )
    handler = logging.StreamHandler()
    json_lines = as_json or log_format.lower() == "json"
    handler.setFormatter(JsonLogFormatter() if json_lines else logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("taskharbor")
    logger.addHandler(handler)
    logger.setLevel(log_level.upper())
    metrics = None if metrics_port is None else serve_metrics(app, metrics_port, metrics_addr)
    try:
        if as_json:
            click.echo(json.dumps({"event": "started", **worker_shape(runner, burst)}))
        runner.run(burst=burst)
        if as_json:
            click.echo(json.dumps({"event": "stopped", "worker_id": runner.worker_id}))
    finally:
        if metrics is not None:
            metrics.close()
        logger.removeHandler(handler)


def serve_metrics(app: App, port: int, addr: str) -> Metrics:
    """Measure ``app`` and serve ``/metrics``; a missing extra is a usage error naming it."""
    try:
        from ..contrib.prometheus import instrument
    except ImportError as error:
        raise click.UsageError(f"--metrics-port: {error}") from None
    metrics = instrument(app)
    try:
        bound = metrics.serve(port, addr)
    except OSError as error:
        metrics.close()
        raise click.UsageError(f"--metrics-port {port}: cannot listen on {addr}: {error}") from None
    logging.getLogger("taskharbor").info("metrics on http://%s:%d/metrics", addr, bound)
    return metrics


def _weighted(queues: tuple[str, ...], weights: tuple[str, ...]) -> dict[str, int]:
    """The worker's queues with their weights: 1 each, or as ``--weight QUEUE=N`` says."""
    chosen = dict.fromkeys(queues, 1)
    for given in weights:
        name, sep, number = given.rpartition("=")
        if not sep or not number.isdigit() or not 1 <= int(number) <= MAX_WEIGHT:
            raise click.BadParameter(
                f"{given!r} is not QUEUE=N with N from 1 to {MAX_WEIGHT}", param_hint="--weight"
            )
        if name not in chosen:
            raise click.BadParameter(
                f"queue {name!r} is not one of the worker's queues (add -q {name})",
                param_hint="--weight",
            )
        chosen[name] = int(number)
    return chosen


def worker_shape(runner: Worker, burst: bool) -> dict[str, object]:
    """The settings ``worker --json`` prints when it starts."""
    return {
        "worker_id": runner.worker_id,
        "queues": list(runner.queues),
        "queue_weights": dict(runner.queue_weights),
        "concurrency": runner.concurrency,
        "lease_seconds": runner.lease,
        "heartbeat_interval_seconds": runner.heartbeat_interval,
        "poll_interval_seconds": runner.poll_interval,
        "shutdown_timeout_seconds": runner.shutdown_timeout,
        "retention_seconds": runner.retention,
        "burst": burst,
    }


class JsonLogFormatter(logging.Formatter):
    """A log record as one JSON object: ``at`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, the record's structured fields when it has some (an attempt's outcome:
    ``messaging.message.id``, ``taskharbor.task``, ``taskharbor.job.outcome``, ...), and
    ``traceback`` when the record carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "at": iso(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


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
@json_option
@click.pass_context
def migrate(ctx: click.Context, check: bool, as_json: bool) -> None:
    """Create or upgrade the store's schema (safe to run again, and from several
    machines at once).

    With --json, prints {"store": ..., "up_to_date": bool, "migrated": bool,
    "needed": reason or null}; --check --json exits 1 when a migration is needed.
    """
    session = ctx.find_object(Session)
    assert session is not None, "the root command sets the session"
    driver = session.driver()
    where = session.source.describe()
    needed: str | None = None
    if check:
        try:
            driver.count()
        except SchemaError as exc:
            needed = str(exc)
    else:
        driver.migrate()
    if as_json:
        shape = {"store": where, "up_to_date": needed is None, "migrated": not check}
        click.echo(dumps({**shape, "needed": needed}))
        ctx.exit(0 if needed is None else 1)
    if needed is not None:
        raise click.ClickException(f"a migration is needed: {needed}")
    if check:
        click.echo(f"the schema of {where} is up to date: no migration needed")
    else:
        click.echo(f"the schema of {where} is up to date")


PRUNE_SCREENFUL = 20
"""Past this many jobs, ``prune`` asks before deleting (unless ``--yes``)."""


@click.command()
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=span_value,
    required=True,
    help="Delete jobs finished longer ago than this, with its unit: 90s, 30m, 12h, 7d, 2w, 1h30m.",
)
@click.option(
    "--dead",
    is_flag=True,
    help="Also delete dead jobs (the dead-letter queue) and failed workflows; "
    "without it they stay until requeued.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--yes",
    "-y",
    is_flag=True,
    help=f"Do not ask before deleting more than {PRUNE_SCREENFUL} jobs.",
)
@json_option
@pass_session
def prune(
    session: Session, older_than: timedelta, dead: bool, dry_run: bool, yes: bool, as_json: bool
) -> None:
    """Delete succeeded and cancelled jobs finished longer ago than a duration.

    Dead jobs (the dead-letter queue) are kept unless --dead is given. A
    workflow's steps go only with the whole finished workflow (a failed one
    only with --dead). Asks before deleting more than a screenful of jobs
    unless --yes. With --json, prints {"pruned": n, "finished_before": time,
    "states": [...], "dry_run": bool}.
    """
    driver = session.driver()
    states = PRUNED_BY_DEFAULT | ({JobState.DEAD} if dead else set())
    cutoff = driver.clock.now() - older_than
    count = driver.prune(cutoff, states, dry_run=True)
    when = f"finished before {cli_render.short_time(cutoff)} UTC"
    names = " and ".join(sorted(state.value for state in states))
    if not dry_run and count > PRUNE_SCREENFUL and not yes:
        click.confirm(f"delete {count} {names} jobs {when}?", abort=True, err=True)
    pruned = count if dry_run or count == 0 else driver.prune(cutoff, states)
    if as_json:
        shape = {
            "pruned": pruned,
            "finished_before": iso(cutoff),
            "states": sorted(state.value for state in states),
            "dry_run": dry_run,
        }
        click.echo(dumps(shape))
    elif dry_run:
        click.echo(f"would prune {pruned} {names} job(s) {when} (dry run: nothing deleted)")
    else:
        click.echo(f"pruned {pruned} {names} job(s) {when}")


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
@click.option(
    "--json", "as_json", is_flag=True, help="Print the states and transitions as JSON, not drawn."
)
@click.pass_context
def diagram(ctx: click.Context, fmt: str, lifecycle: str, as_json: bool) -> None:
    """Print a lifecycle's state diagram, generated from the spec classes.

    With --json, prints {"lifecycle", "states", "initial", "final_states",
    "guards": {name: meaning}, "transitions": [{"event", "source", "target",
    "guards"}]}: a transition is taken when any of its guards holds (or it
    has none), trying an event's transitions from a source in order.
    """
    if not as_json:
        click.echo(render(cast(Lifecycle, lifecycle), cast(Format, fmt)), nl=False)
        return
    if ctx.get_parameter_source("fmt") == ParameterSource.COMMANDLINE:
        raise click.UsageError("give --format or --json, not both")
    click.echo(dumps(lifecycle_shape(cast(Lifecycle, lifecycle))))


@click.command()
def demo() -> None:
    """Run the demo: a few jobs and a workflow on ./taskharbor.db, worked in burst
    mode, then a table of what happened (the same as python -m taskharbor.demo)."""
    from ..demo import main as run_demo

    run_demo()
