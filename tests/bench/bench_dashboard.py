"""Response time of every dashboard page with 1,000,000 jobs in a PostgreSQL store.

Run: ``make bench``, or ``.venv/bin/python tests/bench/bench_dashboard.py [--jobs N]``.

A scratch schema is migrated by the driver, a few jobs of each shape are made
through the SPI (run by a real worker: succeeded, dead with an error and
traceback, waiting, a workflow), and then copied in bulk with one
``INSERT ... SELECT ... generate_series`` into ``--jobs`` rows: the oldest 95 %
finished (one in 19 dead), the newest 5 % a backlog (4 % available, 1 %
scheduled), over 5 queues and 20 task names, created one every 50 ms back from
now, then ``VACUUM ANALYZE`` (as autovacuum leaves a table).  The dashboard is served by uvicorn on
a thread and each page is fetched over HTTP: the figure is the median of 7
requests after one warm-up (the slowest in brackets).  The baseline is the
same page with 1,000 jobs, measured in the same run; the target is 200 ms per
page.  Pages share one sample of ``count()`` and one read of the overview's chart
(``finished_per_minute`` over the last hour, about 22,000 finished jobs at 1,000,000),
each taken at most every few seconds: both are timed on their own too (median of 7
after one warm-up), and the overview costs at most its page time plus both.  The
schema is dropped after.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType

import psycopg
from common import POSTGRES_URL, scratch_schema
from psycopg import sql
from rich.console import Console
from rich.table import Table

import taskharbor as th
from taskharbor.dashboard.throughput import window_start
from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.spec import JobFilter, JobState, WorkflowFilter

ROOT = Path(__file__).resolve().parents[2]
TARGET_MS = 200.0


def _screenshots() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dashboard_screenshots", ROOT / "scripts/dashboard_screenshots.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def templates(driver: PostgresDriver) -> dict[str, int]:
    """One job of each shape, made through the SPI by a real worker; their ids."""
    app = th.App(driver=driver)

    @app.task(name="bench.work", max_attempts=1)
    def work(n: int) -> int:
        if n < 0:
            raise ValueError(f"negative input {n}")
        return n * 2

    ok, bad = work.enqueue(1), work.enqueue(-1)
    app.enqueue(th.chord([work.s(1), work.s(2)], work.s()), name="bench-flow")
    _screenshots().run_worker(app, ["default"])
    waiting = work.enqueue(3)
    later = work.options(delay=3600).enqueue(4)
    return {"succeeded": ok.id, "dead": bad.id, "available": waiting.id, "scheduled": later.id}


def bulk_load(url: str, schema: str, shapes: dict[str, int], total: int) -> None:
    """Copy each template row into its share of ``total`` rows, in one statement each."""
    jobs = sql.Identifier(schema, "jobs")
    with psycopg.connect(url, autocommit=True) as conn:
        columns = [
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = 'jobs' AND column_name <> 'id' "
                "ORDER BY ordinal_position",
                (schema,),
            )
        ]
        overrides = {
            "queue": "'q' || mod(g, 5)",
            "task": "'bench.task_' || mod(g, 20)",
            "created_at": "now() - (%(total)s - g) * interval '50 milliseconds'",
            "run_at": "CASE WHEN t.state = 'scheduled' THEN now() + interval '1 hour' "
            "ELSE now() - (%(total)s - g) * interval '50 milliseconds' END",
            "finished_at": "CASE WHEN t.finished_at IS NULL THEN NULL "
            "ELSE now() - (%(total)s - g) * interval '50 milliseconds' + interval '1 second' END",
            "idempotency_key": "NULL",
        }
        select = sql.SQL(", ").join(
            sql.SQL(overrides[c]) if c in overrides else sql.SQL("t.{}").format(sql.Identifier(c))
            for c in columns
        )
        # The oldest 95 % finished (one in 19 dead), the newest 5 % a backlog waiting
        # (one in 5 scheduled): where the old jobs lie before the ready ones.
        pick = sql.SQL(
            "WHEN g <= %(total)s * 0.95 AND mod(g, 19) = 0 THEN {dead} "
            "WHEN g <= %(total)s * 0.95 THEN {succeeded} "
            "WHEN mod(g, 5) = 0 THEN {scheduled} ELSE {available}"
        ).format(**{state: sql.Literal(job) for state, job in shapes.items()})
        statement = sql.SQL(
            "INSERT INTO {jobs} ({cols}) SELECT {select} FROM generate_series(1, %(total)s) g "
            "JOIN {jobs} t ON t.id = CASE {pick} END"
        ).format(
            jobs=jobs,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            select=select,
            pick=pick,
        )
        conn.execute(statement, {"total": total})
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(jobs))


def pages(driver: PostgresDriver) -> dict[str, str]:
    dead = driver.list_jobs(JobFilter(states=frozenset({JobState.DEAD}), limit=1))
    flows = driver.list_workflows(WorkflowFilter(limit=1))
    newest = driver.list_jobs(JobFilter(newest_first=True, limit=1))[0].id
    return {
        "overview": "/",
        "jobs": "/jobs",
        "jobs, dead, queue q1": "/jobs?state=dead&queue=q1",
        "jobs, one task": "/jobs?task=bench.task_7",
        "jobs, last hour": "/jobs?since=1h",
        "jobs, page 100": f"/jobs?before={max(newest - 5_000, 2)}",
        "a job": f"/jobs/{dead[0].id}",
        "dead letters": "/dlq",
        "workflows": "/workflows",
        "a workflow": f"/workflows/{flows[0].id}",
        "schedules": "/schedules",
        "workers": "/workers",
        "contract": "/contract",
    }


def measure(base: str, paths: dict[str, str], runs: int = 7) -> dict[str, tuple[float, float]]:
    """Median and slowest milliseconds per page (after one warm-up request)."""
    figures = {}
    for name, path in paths.items():
        times = []
        for attempt in range(runs + 1):
            started = time.perf_counter()
            with urllib.request.urlopen(base + path, timeout=60) as response:
                response.read()
                assert response.status == 200, (path, response.status)
            if attempt:
                times.append((time.perf_counter() - started) * 1000)
        figures[name] = (statistics.median(times), max(times))
    return figures


def run(total: int) -> dict[str, tuple[float, float]]:
    shots = _screenshots()
    with scratch_schema(POSTGRES_URL) as schema:
        driver = PostgresDriver(POSTGRES_URL, schema=schema)
        try:
            driver.migrate()
            shapes = templates(driver)
            bulk_load(POSTGRES_URL, schema, shapes, total)
            counting = []
            for _ in range(3):
                started = time.perf_counter()
                driver.count()
                counting.append((time.perf_counter() - started) * 1000)
            since = window_start(driver.clock.now())
            charting = []
            for _ in range(8):
                started = time.perf_counter()
                driver.finished_per_minute(since)
                charting.append((time.perf_counter() - started) * 1000)
            charting = charting[1:]  # after one warm-up, as the pages
            with shots.serve(driver, token="bench", sample_seconds=3600) as base:
                figures = measure(base, pages(driver))
            figures["(count(), shared by all pages)"] = (statistics.median(counting), max(counting))
            figures["(finished_per_minute, the overview's chart)"] = (
                statistics.median(charting),
                max(charting),
            )
            return figures
        finally:
            driver.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    args = parser.parse_args()
    console = Console()
    console.print(f"dashboard pages, PostgreSQL: 1,000 jobs, then {args.jobs:,} jobs ...")
    small = run(1_000)
    started = time.perf_counter()
    big = run(args.jobs)
    console.print(f"(loading, serving and measuring {args.jobs:,} jobs took "
                  f"{time.perf_counter() - started:.0f} s)")  # fmt: skip
    table = Table(
        title=f"Dashboard response time, median of 7 (slowest), target {TARGET_MS:.0f} ms"
    )
    table.add_column("page")
    table.add_column("1,000 jobs", justify="right")
    table.add_column(f"{args.jobs:,} jobs", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("within target")
    for name, (median, slowest) in big.items():
        base_median, base_slowest = small[name]
        table.add_row(
            name,
            f"{base_median:.1f} ms ({base_slowest:.0f})",
            f"{median:.1f} ms ({slowest:.0f})",
            f"{median / base_median:.1f}x",
            "" if name.startswith("(") else "yes" if median <= TARGET_MS else "NO",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
