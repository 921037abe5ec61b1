"""``taskharbor workers``: the workers registered in the store and the jobs each runs.

Workers register when they start, are seen at each heartbeat and deregister
when they stop cleanly; one unseen for a few lease lengths is shown as gone,
and the store forgets it after as long again (``taskharbor.spec.workers``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from taskharbor.spec import Driver, InvalidRequest, JobId, JobNotFound, JobRecord, WorkerRecord

from . import render
from .jobs import json_option
from .shapes import dumps, iso
from .store import Session, pass_session


def running_jobs(driver: Driver, records: Sequence[WorkerRecord]) -> dict[JobId, JobRecord]:
    """The jobs the workers run, read in one call; those that finished and were pruned
    since the registry was read are left out (read one by one then)."""
    ids = [job_id for record in records for job_id in record.running]
    if not ids:
        return {}
    try:
        return {job.id: job for job in driver.get(ids)}
    except JobNotFound:
        found = {}
        for job_id in ids:
            with contextlib.suppress(JobNotFound):
                found[job_id] = driver.get([job_id])[0]
        return found


def _status(record: WorkerRecord) -> str:
    return "gone" if record.gone else "alive"


def worker_shape(record: WorkerRecord, jobs: dict[JobId, JobRecord]) -> dict[str, Any]:
    """A worker for ``--json``: its registration, when it was seen, what it runs."""
    return {
        "id": record.id,
        "status": _status(record),
        "host": record.host,
        "pid": record.pid,
        "queues": list(record.queues),
        "concurrency": record.concurrency,
        "version": record.version,
        "started_at": iso(record.started_at),
        "last_seen_at": iso(record.last_seen_at),
        "ttl_seconds": record.ttl_seconds,
        "running": [
            {"id": job_id, "task": job.task if job else None, "queue": job.queue if job else None}
            for job_id in record.running
            for job in [jobs.get(job_id)]
        ],
    }


def workers_table(records: Sequence[WorkerRecord], now: datetime) -> Table:
    """One row per worker; UP and SEEN are ages at the store's ``now``; RUNNING the ids
    of its jobs (``jobs show ID`` tells the rest)."""
    table = render._listing(
        "WORKER",
        "STATUS",
        "HOST",
        "PID",
        "QUEUES",
        "BUSY",
        "UP",
        "SEEN",
        "RUNNING",
        shrinking=(0, 2, 4, 8),
    )
    for record in records:
        running = ", ".join(str(job_id) for job_id in record.running)
        table.add_row(
            render._cell(record.id),
            Text(_status(record), style="red" if record.gone else "green"),
            render._cell(record.host),
            str(record.pid),
            render._cell(", ".join(record.queues)),
            f"{len(record.running)}/{record.concurrency}",
            render.age((now - record.started_at).total_seconds()),
            f"{render.age((now - record.last_seen_at).total_seconds())} ago",
            render._cell(running or "-"),
        )
    return table


@click.command("workers")
@json_option
@pass_session
def workers(session: Session, as_json: bool) -> None:
    """List the workers registered in the store: host, pid, queues, busy slots of
    its concurrency, when it started and was last seen, and the jobs it is running.

    A worker unseen for a few lease lengths (it crashed, or lost the store) is
    "gone"; the store forgets it after as long again.  With --json, prints
    {"workers": [...]}.
    """
    driver = session.driver()
    if not driver.capabilities.workers:
        raise InvalidRequest(
            f"{type(driver).__name__} does not declare capability 'workers': "
            "it keeps no workers registry"
        )
    records = driver.list_workers()
    if as_json:
        jobs = running_jobs(driver, records)
        click.echo(dumps({"workers": [worker_shape(record, jobs) for record in records]}))
        return
    if not records:
        click.echo("no workers registered (a worker registers when it starts)")
        return
    render.stdout().print(workers_table(records, driver.clock.now()))
