"""``python -m taskharbor.demo`` (``make demo``): a tour of TaskHarbor in a few seconds.

Defines a few tasks, enqueues jobs and a workflow on the embedded default
store (``./taskharbor.db``), runs a worker in burst mode, and prints what
happened: results, one retry, and one job that ends in the dead-letter queue.
The store is reused from run to run (it is the one ``th.App()`` and the CLI
open by default): the demo says so, with how many jobs earlier runs left.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import taskharbor as th

QUEUE = "demo"
"""The demo's own queue, so a worker started here never takes other jobs in the store."""


def build_app() -> th.App:
    """The demo app and its tasks."""
    app = th.App()
    no_wait = th.Backoff.constant(0)  # retry at once, so a burst run sees the retry

    @app.task(name="demo.greet", queue=QUEUE)
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    @app.task(name="demo.fetch_size", queue=QUEUE)
    async def fetch_size(page: str) -> int:
        await asyncio.sleep(0.05)  # pretend to download, without blocking the worker
        return len(page) * 1000

    @app.task(name="demo.flaky_upload", queue=QUEUE, max_attempts=3, backoff=no_wait)
    def flaky_upload(path: str) -> str:
        if th.current_job().attempt == 1:
            raise ConnectionError("storage timed out (first attempt only)")
        return f"uploaded {path}"

    @app.task(name="demo.charge_card", queue=QUEUE, max_attempts=2, backoff=no_wait)
    def charge_card(card: str) -> None:
        raise ValueError(f"card {card} declined")

    @app.task(name="demo.add", queue=QUEUE)
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="demo.total", queue=QUEUE)
    def total(values: list[int]) -> int:
        return sum(values)

    return app


def main() -> None:
    """Run the tour and print a table of this run's jobs."""
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s")
    console = Console()
    app = build_app()
    tasks = app.tasks
    path = Path("taskharbor.db").resolve()
    earlier = sum(sum(states.values()) for states in app.stats().values())
    console.print(
        f"[bold]TaskHarbor demo[/] on {type(app.driver).__name__}: {escape(str(path))}",
        soft_wrap=True,
    )
    if earlier:
        console.print(
            f"reusing this store: it holds {earlier} job(s) from earlier runs, kept as they "
            "are (delete the file to start clean)",
            soft_wrap=True,
        )
    else:
        console.print("a new store: nothing from earlier runs")
    jobs = [
        tasks["demo.greet"].enqueue("Ada"),
        tasks["demo.fetch_size"].enqueue("index.html"),
        tasks["demo.flaky_upload"].enqueue("report.pdf"),
        tasks["demo.charge_card"].enqueue("4242"),
    ]
    add, total = tasks["demo.add"], tasks["demo.total"]
    workflow = app.enqueue(th.chord([add.s(1, 2), add.s(3, 4), add.s(5, 6)], total.s()))
    console.print(f"enqueued jobs {[job.id for job in jobs]} and workflow {workflow.id}\n")

    th.Worker(app, queues=[QUEUE], concurrency=4, poll_interval=0.05).run(burst=True)

    table = Table(title="What happened")
    for column in ("job", "task", "state", "attempts", "result or last error"):
        table.add_column(column)
    for job in (app.get_job(job) for job in jobs):
        error = job.last_error
        if job.state == th.JobState.SUCCEEDED or error is None:
            outcome = repr(job.result)
        else:
            outcome = f"{error.type}: {error.message}"
        attempts = f"{job.attempt}/{job.max_attempts}"
        table.add_row(str(job.id), job.task, job.state, attempts, outcome)
    console.print(table)
    state, result = workflow.status().state, workflow.result()
    console.print(f"workflow {workflow.id} (a chord: three adds, then total): {state}, {result!r}")
    dead = app.list_jobs(state="dead", queue=QUEUE, limit=1000)
    ours = sum(1 for job in dead if job.id in {j.id for j in jobs})
    console.print(
        f"dead-letter queue of '{QUEUE}': {len(dead)} job(s)"
        + (f" ({ours} from this run)" if len(dead) != ours else "")
    )
    if dead:
        # Printed unwrapped: these lines are meant to be pasted into a shell.
        cli = cli_command()
        console.print("look at it and requeue from this folder (or app.requeue(job_id) in code):")
        for line in (
            f"  {cli} dlq list --queue {QUEUE}",
            f"  {cli} dlq requeue {' '.join(str(job.id) for job in dead)}",
        ):
            console.print(line, soft_wrap=True, markup=False)
    app.close()


def cli_command() -> str:
    """How to call ``taskharbor`` from the shell the demo was started in: its name when
    the PATH finds this installation's script, else that script's path (under
    ``make demo`` the virtualenv is not activated, so ``.venv/bin/taskharbor``)."""
    beside = Path(sys.executable).parent / "taskharbor"
    found = shutil.which("taskharbor")
    if not beside.exists() or (found is not None and Path(found).resolve() == beside.resolve()):
        return "taskharbor"
    try:
        return shlex.quote(str(beside.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(beside))


if __name__ == "__main__":
    main()
