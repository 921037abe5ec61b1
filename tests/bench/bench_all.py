"""TaskHarbor beside its peers and beside the raw SQL limit, all measured in one run.

Run: ``make bench`` (installs the ``bench`` extra), or
``.venv/bin/python tests/bench/bench_all.py [--scale F] [--out DIR]``.
PostgreSQL comes from ``$TASKHARBOR_TEST_POSTGRES`` (default: the test
database on 127.0.0.1).  Every system gets fresh storage, dropped afterwards.

Prints one table (jobs/s and enqueue-to-start latency per system), then the
issue's targets as ratios measured in this run, and writes ``results.json``,
``results.png`` and ``profile.txt`` to ``--out`` (default ``bench-results/``).
It is a measurement, not a test: it checks only that every job ran.
See docs/performance.md for what bounds each figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import engine_cost
import peers
import raw_sql
import taskharbor_harness as harbor
from common import POSTGRES_URL, Figures, scratch_schema
from rich.console import Console
from rich.table import Table

BASE_SIZES: dict[str, dict[str, int]] = {
    "memory": {"single": 20_000, "bulk": 100_000, "process": 50_000},
    "sqlite": {"single": 2_000, "bulk": 30_000, "process": 20_000, "latency": 150},
    "postgres": {"single": 3_000, "bulk": 50_000, "process": 20_000, "latency": 300},
    "postgres_4": {"process": 30_000},
    "raw": {"single": 3_000, "bulk": 50_000, "process": 20_000},
    "pgqueuer": {"single": 2_000, "bulk": 30_000, "process": 5_000, "latency": 150},
    "procrastinate": {"single": 500, "bulk": 5_000, "process": 1_000, "latency": 50},
    "huey": {"single": 3_000, "process": 5_000, "latency": 40},
    "long_run": {"jobs": 1_000_000},
    "profile": {"jobs": 20_000},
}


def scaled(scale: float) -> dict[str, dict[str, int]]:
    return {
        system: {key: max(10, int(n * scale)) for key, n in sizes.items()}
        for system, sizes in BASE_SIZES.items()
    }


def postgres_stores(url: str) -> Callable[[], AbstractContextManager[str]]:
    @contextmanager
    def fresh() -> Iterator[str]:
        with scratch_schema(url) as schema:
            yield f"{url}{'&' if '?' in url else '?'}schema={schema}"

    return fresh


def sqlite_stores(folder: Path) -> Callable[[], AbstractContextManager[str]]:
    @contextmanager
    def fresh() -> Iterator[str]:
        yield f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:8]}.db'}"

    return fresh


@contextmanager
def memory_store() -> Iterator[str]:
    yield "memory://"


def raw_limits(url: str, sizes: dict[str, int]) -> Figures:
    figures = Figures()
    with scratch_schema(url) as schema:
        figures.processing = raw_sql.lease_complete(url, schema, sizes["process"])
    with scratch_schema(url) as schema:
        figures.enqueue_single = raw_sql.single_inserts(url, schema, sizes["single"])
    with scratch_schema(url) as schema:
        figures.enqueue_bulk = raw_sql.multi_row_inserts(url, schema, sizes["bulk"])
    return figures


def measure_all(url: str, sizes: dict[str, dict[str, int]], say: Callable[[str], None]) -> Any:
    systems: dict[str, Figures] = {}
    say("raw SQL limits")
    systems["raw SQL (psycopg, PostgreSQL)"] = raw_limits(url, sizes["raw"])
    say("TaskHarbor on PostgreSQL")
    pg = harbor.measure(postgres_stores(url), sizes["postgres"], in_process=False)
    systems["TaskHarbor PostgreSQL"] = pg
    say("TaskHarbor on PostgreSQL, 4 worker processes")
    with postgres_stores(url)() as store:
        four = Figures(processing=harbor.process(store, sizes["postgres_4"]["process"], 4))
    systems["TaskHarbor PostgreSQL, 4 processes"] = four
    say("PgQueuer")
    systems[f"PgQueuer (batch {peers.PGQUEUER_BATCH})"] = peers.pgqueuer(url, sizes["pgqueuer"])
    say("Procrastinate")
    procrastinate = peers.procrastinate(url, sizes["procrastinate"])
    systems[f"Procrastinate (concurrency {peers.PROCRASTINATE_CONCURRENCY})"] = procrastinate
    say("TaskHarbor on SQLite")
    with tempfile.TemporaryDirectory(prefix="taskharbor-bench-") as folder:
        stores = sqlite_stores(Path(folder))
        systems["TaskHarbor SQLite"] = harbor.measure(stores, sizes["sqlite"], in_process=False)
    say("Huey on SQLite")
    systems["Huey SQLite (1 thread)"] = peers.huey_sqlite(sizes["huey"])
    say("TaskHarbor on the memory driver")
    systems["TaskHarbor memory"] = harbor.measure(memory_store, sizes["memory"], in_process=True)
    long_run = {}
    for setting, env in engine_cost.MALLOC_SETTINGS.items():
        say(f"long run (RSS), {setting}")
        long_run[setting] = engine_cost.long_run_in_child(sizes["long_run"]["jobs"], env)
    say("profile")
    per_job_us, profile_text = engine_cost.profile(sizes["profile"]["jobs"])
    return systems, long_run, per_job_us, profile_text


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def targets(systems: dict[str, Figures], long_run: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of issue 8: its measured value, its bound, met or not."""
    raw = systems["raw SQL (psycopg, PostgreSQL)"]
    pg = systems["TaskHarbor PostgreSQL"]
    pgq = next(f for name, f in systems.items() if name.startswith("PgQueuer"))
    sqlite = systems["TaskHarbor SQLite"]
    huey = systems["Huey SQLite (1 thread)"]
    four = systems["TaskHarbor PostgreSQL, 4 processes"]
    memory = systems["TaskHarbor memory"]
    rows: list[tuple[str, float | None, str, float]] = [
        ("PG processing / raw lease+complete", _ratio(pg.processing, raw.processing), ">=", 0.40),
        ("PG processing / PgQueuer", _ratio(pg.processing, pgq.processing), ">=", 5.0),
        ("PG bulk enqueue / raw 1000-row INSERT", _ratio(pg.enqueue_bulk, raw.enqueue_bulk),
         ">=", 0.40),
        ("PG 1-by-1 enqueue / raw single INSERT", _ratio(pg.enqueue_single, raw.enqueue_single),
         ">=", 0.75),
        ("PG enqueue->start p50 (ms)", pg.p50(), "<=", 3.0),
        ("PG enqueue->start p99 (ms)", pg.p99(), "<=", 15.0),
        ("PG 4 processes / 1 process", _ratio(four.processing, pg.processing), ">=", 1.5),
        ("SQLite processing / Huey", _ratio(sqlite.processing, huey.processing), ">=", 4.0),
        ("SQLite enqueue->start p50 (ms)", sqlite.p50(), "<=", 5.0),
        ("memory driver processing (jobs/s)", memory.processing, ">=", 50_000),
    ]  # fmt: skip
    for setting, run in long_run.items():
        rows.append((f"long run RSS growth, 2nd to last tenth (MiB), {setting}", _growth(run),
                     "<=", 5.0))  # fmt: skip
    return [
        {
            "target": name,
            "measured": value,
            "bound": f"{op} {bound:g}",
            "met": value is not None and (value >= bound if op == ">=" else value <= bound),
        }
        for name, value, op, bound in rows
    ]


def _growth(run: dict[str, Any]) -> float | None:
    """RSS after the last tenth of the long run minus after the second (once warm)."""
    tenths = run["rss_each_tenth_mib"]
    return float(tenths[-1] - tenths[1]) if len(tenths) > 1 else None


def _cell(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.2f}{unit}" if value < 100 else f"{value:,.0f}{unit}"


def print_results(
    console: Console,
    systems: dict[str, Figures],
    goals: list[dict[str, Any]],
    extra: dict[str, Any],
) -> None:
    table = Table(title="No-op jobs, one worker process unless said (jobs/s; latency ms)")
    columns = ("system", "processing", "enqueue 1-by-1", "bulk enqueue", "p50", "p99")
    for column in columns:
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, f in systems.items():
        cells = (f.processing, f.enqueue_single, f.enqueue_bulk, f.p50(), f.p99())
        table.add_row(name, *(_cell(value) for value in cells))
    console.print(table)
    goal_table = Table(title="Issue 8 targets, as ratios measured in this run")
    for column in ("target", "measured", "bound", "met"):
        goal_table.add_column(column, justify="left" if column == "target" else "right")
    for goal in goals:
        met = "yes" if goal["met"] else "NO"
        goal_table.add_row(goal["target"], _cell(goal["measured"]), goal["bound"], met)
    console.print(goal_table)
    for setting, run in extra["long_run"].items():
        console.print(
            f"long run, memory driver, {setting}: {run['jobs']:,} jobs at {run['jobs_s']:,.0f}"
            f" jobs/s; RSS start {run['rss_start_mib']:.1f} MiB, peak {run['rss_peak_mib']:.1f},"
            f" end {run['rss_end_mib']:.1f}; after each tenth: "
            + ", ".join(f"{mib:.1f}" for mib in run["rss_each_tenth_mib"])
        )
    console.print(f"profiled burst, memory driver: {extra['per_job_us']:.1f} µs per job")


def chart(systems: dict[str, Figures], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [("processing", "processing"), ("enqueue_single", "enqueue 1-by-1")]
    kinds.append(("enqueue_bulk", "bulk enqueue"))
    names = list(systems)
    figure, axes = plt.subplots(1, len(kinds), figsize=(15, 5), sharey=True)
    for axis, (attribute, title) in zip(axes, kinds, strict=True):
        values = [getattr(systems[name], attribute) or 0 for name in names]
        axis.barh(
            names, values, color=["#2b6cb0" if "TaskHarbor" in n else "#a0aec0" for n in names]
        )
        axis.set_xscale("symlog")
        axis.set_title(f"{title} (jobs/s)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=POSTGRES_URL, help="PostgreSQL URL (a scratch server)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every job count")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    args = parser.parse_args(argv)
    console = Console(width=120)
    sizes = scaled(args.scale)
    systems, long_run, per_job_us, profile_text = measure_all(
        args.url, sizes, lambda what: console.log(f"measuring {what}")
    )
    goals = targets(systems, long_run)
    extra = {"long_run": long_run, "per_job_us": per_job_us}
    print_results(console, systems, goals, extra)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "sizes": sizes,
        "systems": {name: figures.as_json() for name, figures in systems.items()},
        "targets": goals,
        **extra,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "profile.txt").write_text(profile_text)
    chart(systems, args.out / "results.png")
    console.print(f"wrote {args.out}/results.json, results.png, profile.txt")


if __name__ == "__main__":
    main()
