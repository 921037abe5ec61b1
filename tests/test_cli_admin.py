"""``taskharbor stats``, ``prune``, ``migrate``, ``spec diagram`` and ``worker``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from test_cli_support import AppModule, CliStore, app_module, cli_store, invoke, one_error_line

import taskharbor as th
from driver_registry import POSTGRES_URL, skip_without_postgres
from taskharbor.app import App
from taskharbor.cli import main as cli_main
from taskharbor.cli.admin import PRUNE_SCREENFUL
from taskharbor.spec import EnqueueRequest, JobNotFound, JobState
from taskharbor.spec.diagrams import FORMATS, render
from taskharbor.spec.lifecycle import JOB_GUARDS
from taskharbor.spec.table import JOB
from taskharbor.urls import open_driver

__all__ = ["app_module", "cli_store"]


def test_stats_counts_per_queue_and_state_and_the_oldest_ready_age(cli_store: CliStore) -> None:
    cli_store.enqueue(count=2)
    cli_store.clock.advance(90)
    cli_store.enqueue(queue="mail")
    cli_store.dead(count=3)
    shape = cli_store.json("stats")
    assert datetime.fromisoformat(shape["now"]) == cli_store.clock.now()
    default, mail, dlq = (shape["queues"][name] for name in ("default", "mail", "dlq-source"))
    assert default["counts"] == {state.value: 0 for state in JobState} | {"available": 2}
    assert default["total"] == 2 and default["oldest_ready_age_seconds"] == 90.0
    assert mail["oldest_ready_age_seconds"] == 0.0
    assert dlq["counts"]["dead"] == 3 and dlq["oldest_ready_age_seconds"] is None
    assert shape["totals"]["available"] == 3 and shape["totals"]["dead"] == 3
    assert shape["total"] == 6
    table = cli_store.ok("stats").stdout
    assert "1m 30s" in table and "(all)" in table
    assert max(len(line) for line in table.splitlines()) <= 80


def test_stats_oldest_ready_age_counts_from_run_at(cli_store: CliStore) -> None:
    """The first job enqueued became ready last: neither the lowest id nor the earliest
    ``created_at`` tells which job has waited longest."""
    cli_store.enqueue(run_at=cli_store.clock.now() + timedelta(seconds=100))
    cli_store.clock.advance(10)
    cli_store.enqueue()
    cli_store.clock.advance(110)
    cli_store.driver.promote()
    assert cli_store.json("stats")["queues"]["default"]["oldest_ready_age_seconds"] == 110.0


def test_stats_of_an_empty_store(cli_store: CliStore) -> None:
    assert cli_store.json("stats")["queues"] == {}
    assert cli_store.ok("stats").stdout.strip() == "the store holds no jobs"


def test_prune_deletes_jobs_finished_longer_ago_than_given(cli_store: CliStore) -> None:
    done = cli_store.succeeded()
    (waiting,) = cli_store.enqueue()
    cli_store.clock.advance(2 * 3600)
    assert cli_store.json("prune", "--older-than", "3h")["pruned"] == 0
    shape = cli_store.json("prune", "--older-than", "1h")
    assert shape["pruned"] == 1
    cutoff = cli_store.clock.now() - timedelta(hours=1)
    assert datetime.fromisoformat(shape["finished_before"]) == cutoff
    with pytest.raises(JobNotFound):
        cli_store.driver.get([done.id])
    assert cli_store.driver.get([waiting.id])[0].state == JobState.AVAILABLE
    assert (
        "pruned 0 cancelled and succeeded job(s)"
        in cli_store.ok("prune", "--older-than", "1h30m").stdout
    )


def test_prune_refuses_a_bad_duration(cli_store: CliStore) -> None:
    result = cli_store.run("prune", "--older-than", "soon")
    assert result.exit_code == 2
    assert "'soon' is not a duration" in one_error_line(result)


@pytest.mark.parametrize("bare", ["3", "0", "2.5"])
def test_prune_refuses_a_duration_without_its_unit(cli_store: CliStore, bare: str) -> None:
    done = cli_store.succeeded()
    cli_store.clock.advance(3600)
    result = cli_store.run("prune", "--older-than", bare)
    assert result.exit_code == 2
    assert f"{bare!r} has no unit: write {bare}s, {bare}m" in one_error_line(result)
    assert cli_store.driver.get([done.id])[0] == done
    for spelled in ("3s", "10m", "7d"):
        cli_store.ok("prune", "--older-than", spelled)


def test_prune_keeps_the_dead_letter_queue_unless_asked(cli_store: CliStore) -> None:
    (dead,) = cli_store.dead()
    done = cli_store.succeeded()
    cli_store.clock.advance(3600)
    shape = cli_store.json("prune", "--older-than", "1m")
    assert (shape["pruned"], shape["states"]) == (1, ["cancelled", "succeeded"])
    assert cli_store.driver.get([dead.id])[0] == dead
    with pytest.raises(JobNotFound):
        cli_store.driver.get([done.id])
    assert "pruned 1 cancelled and dead and succeeded job(s)" in (
        cli_store.ok("prune", "--older-than", "1m", "--dead").stdout
    )
    with pytest.raises(JobNotFound):
        cli_store.driver.get([dead.id])


def test_prune_dry_run_counts_and_deletes_nothing(cli_store: CliStore) -> None:
    cli_store.dead(count=2)
    cli_store.succeeded()
    cli_store.clock.advance(3600)
    before = cli_store.driver.count()
    shape = cli_store.json("prune", "--older-than", "1m", "--dead", "--dry-run")
    assert (shape["pruned"], shape["dry_run"]) == (3, True)
    text = cli_store.ok("prune", "--older-than", "1m", "--dry-run").stdout
    assert "would prune 1 cancelled and succeeded job(s)" in text and "nothing deleted" in text
    assert cli_store.driver.count() == before


def test_prune_asks_before_deleting_more_than_a_screenful(cli_store: CliStore) -> None:
    many = PRUNE_SCREENFUL + 1
    cli_store.dead(count=many)
    cli_store.clock.advance(3600)
    args = ["--app", cli_store.app_path, "prune", "--older-than", "1m", "--dead"]
    refused = CliRunner().invoke(cli_main, args, input="n\n")
    assert refused.exit_code == 1 and f"delete {many} " in refused.stderr
    assert cli_store.driver.count()[("dlq-source", JobState.DEAD)] == many
    closed = CliRunner().invoke(cli_main, args, input="")  # no terminal to answer: no
    assert closed.exit_code == 1
    agreed = CliRunner().invoke(cli_main, args, input="y\n")
    assert agreed.exit_code == 0 and f"pruned {many} " in agreed.stdout
    cli_store.dead(count=many)
    cli_store.clock.advance(3600)
    assert (
        f"pruned {many} " in cli_store.ok("prune", "--older-than", "1m", "--dead", "--yes").stdout
    )


def test_migrate_on_a_current_store(cli_store: CliStore) -> None:
    assert "is up to date" in cli_store.ok("migrate").stdout
    assert "no migration needed" in cli_store.ok("migrate", "--check").stdout


def test_migrate_check_then_migrate_a_new_sqlite_store(
    tmp_path: Path, app_module: AppModule
) -> None:
    from taskharbor.drivers.sqlite import SQLiteDriver

    name = app_module(
        "from taskharbor.app import App\n"
        "from taskharbor.drivers.sqlite import SQLiteDriver\n"
        "app = App(driver=SQLiteDriver('store.db', migrate=False))\n"
    )
    check = invoke(["--app", f"{name}:app", "migrate", "--check"])
    assert check.exit_code == 1
    assert "a migration is needed" in one_error_line(check)
    assert invoke(["--app", f"{name}:app", "migrate"]).exit_code == 0
    again = invoke(["--app", f"{name}:app", "migrate", "--check"])
    assert again.exit_code == 0, again.stderr
    with App(driver=SQLiteDriver(tmp_path / "store.db", migrate=False)) as app:
        assert app.stats() == {}


@pytest.mark.parametrize("lifecycle", ["job", "workflow"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_spec_diagram_prints_the_generated_diagram(fmt: str, lifecycle: str) -> None:
    result = invoke(["spec", "diagram", "--format", fmt, "--lifecycle", lifecycle])
    assert result.exit_code == 0
    assert result.stdout == render(lifecycle, fmt)  # type: ignore[arg-type]


def test_spec_diagram_defaults_to_the_job_lifecycle_in_mermaid() -> None:
    assert invoke(["spec", "diagram"]).stdout == render("job", "mermaid")


def test_spec_diagram_refuses_an_unknown_format() -> None:
    result = invoke(["spec", "diagram", "--format", "png"])
    assert result.exit_code == 2
    assert "'png' is not one of" in one_error_line(result)


def test_worker_burst_runs_ready_jobs_and_logs_each_outcome(cli_store: CliStore) -> None:
    @cli_store.app.task(name="tasks.add")
    def add(a: int, b: int) -> int:
        return a + b

    @cli_store.app.task(name="tasks.broken", max_attempts=1)
    def broken() -> None:
        raise RuntimeError("out of order")

    job = add.enqueue(2, 3)
    failing = broken.enqueue()
    result = cli_store.ok("worker", "--burst", "--queue", "default", "--concurrency", "2")
    assert cli_store.app.get_job(job.id).result == 5
    assert cli_store.app.get_job(failing.id).state == JobState.DEAD
    assert f"job {job.id} tasks.add attempt 1/3 -> succeeded" in result.stderr
    assert f"job {failing.id} tasks.broken attempt 1/1 -> dead" in result.stderr
    assert "RuntimeError: out of order" in result.stderr


def test_worker_on_a_queue_with_no_job_returns_in_burst_mode(cli_store: CliStore) -> None:
    (other,) = cli_store.enqueue(queue="elsewhere")
    cli_store.ok("worker", "--burst", "-q", "quiet")
    assert cli_store.driver.get([other.id])[0].state == JobState.AVAILABLE


def test_worker_needs_the_app(tmp_path: Path) -> None:
    result = invoke(["--url", f"sqlite:///{tmp_path}/store.db", "worker", "--burst"])
    assert result.exit_code == 2
    assert "worker needs the application's code" in one_error_line(result)


def test_migrate_check_then_migrate_a_new_postgres_schema() -> None:
    skip_without_postgres()
    import psycopg

    from taskharbor.drivers.postgres import PostgresDriver

    schema = f"th_cli_{uuid.uuid4().hex[:12]}"
    module = types.ModuleType(f"cli_test_pg_{schema}")
    module.__dict__["app"] = App(driver=PostgresDriver(POSTGRES_URL, schema=schema))
    sys.modules[module.__name__] = module
    app_path = f"{module.__name__}:app"
    try:
        check = invoke(["--app", app_path, "migrate", "--check"])
        assert check.exit_code == 1
        assert f"schema {schema!r} has no TaskHarbor tables yet" in one_error_line(check)
        assert invoke(["--app", app_path, "migrate"]).exit_code == 0
        assert invoke(["--app", app_path, "migrate", "--check"]).exit_code == 0
    finally:
        del sys.modules[module.__name__]
        module.app.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_demo_runs_the_tour_on_the_embedded_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(["demo"])
    assert result.exit_code == 0, result.stderr
    assert "TaskHarbor demo" in result.stdout and "What happened" in result.stdout
    assert (tmp_path / "taskharbor.db").exists()


@pytest.mark.parametrize("through", ["option", "environment"])
def test_a_postgres_url_with_a_schema_works_in_every_command(through: str) -> None:
    """The documented ?schema= URL reaches the driver as the library reads it,
    through --url and TASKHARBOR_URL alike."""
    skip_without_postgres()
    import psycopg

    schema = f"th_cli_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{separator}schema={schema}"

    def run(*args: str) -> Result:
        if through == "option":
            return invoke(["--url", url, *args], env={"TASKHARBOR_APP": ""})
        return invoke(list(args), env={"TASKHARBOR_URL": url, "TASKHARBOR_APP": ""})

    try:
        check = run("migrate", "--check")
        assert check.exit_code == 1 and f"schema {schema!r} has no TaskHarbor tables" in (
            check.stderr
        )
        migrated = run("migrate")
        assert migrated.exit_code == 0, migrated.stderr
        driver = open_driver(url)
        try:
            driver.enqueue([EnqueueRequest("tasks.add", args=(1,))])
        finally:
            driver.close()
        for command in (["jobs", "list"], ["stats"], ["dlq", "list"], ["migrate", "--check"]):
            result = run(*command)
            assert result.exit_code == 0, (command, result.stderr)
        assert "tasks.add" in run("jobs", "list").stdout
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


NO_STORE_ENV = {"TASKHARBOR_APP": "", "TASKHARBOR_URL": ""}


def test_without_a_store_the_cli_uses_the_library_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    default = tmp_path / "taskharbor.db"
    note = f"store: {default} (the default, as th.App(); give --app or --url for another)"
    missing = invoke(["jobs", "list"], env=NO_STORE_ENV)
    assert missing.exit_code == 1
    assert missing.stderr.splitlines() == [
        note,
        f"Error: {default} does not exist (opened with migrate=False, so it is not created): "
        "create it with `taskharbor migrate` or open it with migrate=True",
    ]
    migrated = invoke(["migrate"], env=NO_STORE_ENV)
    assert migrated.exit_code == 0 and migrated.stderr.splitlines() == [note]
    with App() as app:  # the library's default store: the same file

        @app.task(name="tasks.add")
        def add(a: int, b: int) -> int:
            return a + b

        job = add.enqueue(1, 2)
    listed = invoke(["jobs", "list", "--json"], env=NO_STORE_ENV)
    assert [shown["id"] for shown in json.loads(listed.stdout)["jobs"]] == [job.id]
    assert listed.stderr.splitlines() == [note]


def test_the_demo_hint_works_when_pasted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    demo = invoke(["demo"], env=NO_STORE_ENV)
    assert demo.exit_code == 0, demo.stderr
    lines = demo.stdout.splitlines()
    hint = lines[lines.index(next(line for line in lines if line.startswith("look at it"))) + 1 :]
    assert len(hint) == 2 and "dlq list" in hint[0] and "dlq requeue" in hint[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("TASKHARBOR_")}
    shown, requeued = (
        subprocess.run(
            line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )
        for line in hint
    )
    assert shown.returncode == 0, shown.stderr
    assert "demo.charge_card" in shown.stdout and "ValueError: card 4242" in shown.stdout
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.startswith("requeued 1 job(s)")
    assert f"store: {tmp_path / 'taskharbor.db'}" in requeued.stderr


def test_migrate_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    migrated = invoke(["--url", url, "migrate", "--json"])
    assert migrated.exit_code == 0, migrated.stderr
    assert json.loads(migrated.stdout) == {
        "store": f"store {url}",
        "up_to_date": True,
        "migrated": True,
        "needed": None,
    }
    checked = json.loads(invoke(["--url", url, "migrate", "--check", "--json"]).stdout)
    assert (checked["up_to_date"], checked["migrated"]) == (True, False)


def test_migrate_check_json_says_what_is_needed(app_module: AppModule) -> None:
    name = app_module(
        "from taskharbor import App\n"
        "from taskharbor.drivers.sqlite import SQLiteDriver\n"
        "app = App(driver=SQLiteDriver('store.db', migrate=False))\n"
    )
    check = invoke(["--app", f"{name}:app", "migrate", "--check", "--json"])
    assert check.exit_code == 1
    shape = json.loads(check.stdout)
    assert (shape["up_to_date"], shape["migrated"]) == (False, False)
    assert "store.db does not exist" in shape["needed"]


def test_spec_diagram_json_is_the_spec_table() -> None:
    shape = json.loads(invoke(["spec", "diagram", "--json"]).stdout)
    assert (shape["lifecycle"], shape["initial"]) == ("job", "new")
    assert shape["states"] == list(JOB.states)
    assert shape["guards"] == dict(JOB_GUARDS)
    transitions = shape["transitions"]
    found = {(t["event"], t["source"], t["target"], tuple(t["guards"])) for t in transitions}
    expected = {
        (event, source, choice.target, choice.guards)
        for event in JOB.events
        for source in JOB.states
        for choice in JOB.options(event, source)
    }
    assert found == expected and len(transitions) == len(expected)
    workflow = json.loads(invoke(["spec", "diagram", "--lifecycle", "workflow", "--json"]).stdout)
    assert workflow["initial"] == "running" and workflow["final_states"] == ["succeeded"]
    both = invoke(["spec", "diagram", "--format", "dot", "--json"])
    assert both.exit_code == 2 and "--format or --json" in one_error_line(both)


def test_worker_flags_and_json_lines(cli_store: CliStore) -> None:
    @cli_store.app.task(name="tasks.add")
    def add(a: int, b: int) -> int:
        return a + b

    job = add.enqueue(2, 3)
    result = cli_store.ok(
        "worker",
        "--burst",
        "--json",
        "--lease",
        "12",
        "--heartbeat-interval",
        "2.5",
        "--poll-interval",
        "0.25",
        "--shutdown-timeout",
        "7",
    )
    started, stopped = (json.loads(line) for line in result.stdout.splitlines())
    assert started == {
        "event": "started",
        "worker_id": started["worker_id"],
        "queues": ["default"],
        "queue_weights": {"default": 1},
        "concurrency": 8,
        "lease_seconds": 12.0,
        "heartbeat_interval_seconds": 2.5,
        "poll_interval_seconds": 0.25,
        "shutdown_timeout_seconds": 7.0,
        "retention_seconds": 7 * 86_400.0,
        "burst": True,
    }
    assert stopped == {"event": "stopped", "worker_id": started["worker_id"]}
    logged = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"at", "level", "logger", "message"} <= set(logged[0])
    assert any(f"job {job.id} tasks.add" in entry["message"] for entry in logged)
    assert cli_store.app.get_job(job.id).result == 5
    defaults = json.loads(cli_store.ok("worker", "--burst", "--json").stdout.splitlines()[0])
    assert defaults["heartbeat_interval_seconds"] == 10.0  # a third of the 30 s lease


def test_worker_log_format_json_gives_each_outcome_its_fields(cli_store: CliStore) -> None:
    @cli_store.app.task(name="tasks.flaky", max_attempts=2, backoff=th.Backoff.constant(0))
    def flaky() -> None:
        raise ConnectionError("storage timed out")

    job = flaky.options(queue="mail").enqueue()
    result = cli_store.ok("worker", "--burst", "-q", "mail", "--log-format", "json")
    assert result.stdout == ""  # only --json prints the started and stopped lines
    logged = [json.loads(line) for line in result.stderr.splitlines()]
    outcomes = [entry for entry in logged if "taskharbor.job.outcome" in entry]
    common = {
        "level": "info",
        "logger": "taskharbor",
        "messaging.system": "taskharbor",
        "messaging.destination.name": "mail",
        "messaging.message.id": str(job.id),
        "taskharbor.task": "tasks.flaky",
        "taskharbor.job.max_attempts": 2,
        "exception.type": "ConnectionError",
        "exception.message": "storage timed out",
    }
    assert [{key: entry.get(key) for key in common} for entry in outcomes] == [common] * 2
    assert [
        (e["taskharbor.job.attempt"], e["taskharbor.job.outcome"], "taskharbor.job.run_at" in e)
        for e in outcomes
    ] == [(1, "retrying", True), (2, "dead", False)]
    assert all(entry["taskharbor.job.duration_seconds"] >= 0 for entry in outcomes)
    assert len({entry["taskharbor.worker.id"] for entry in outcomes}) == 1
    text = cli_store.ok("worker", "--burst", "--log-format", "text").stderr
    assert not text.lstrip().startswith("{")


@pytest.mark.parametrize(
    ("flags", "retention"),
    [(("--retention", "36h"), 36 * 3600.0), (("--retention", "1d", "--keep-finished"), None)],
)
def test_worker_retention_flags(
    cli_store: CliStore, flags: tuple[str, ...], retention: float | None
) -> None:
    result = cli_store.ok("worker", "--burst", "--json", *flags)
    assert json.loads(result.stdout.splitlines()[0])["retention_seconds"] == retention


def test_worker_retention_needs_a_unit(cli_store: CliStore) -> None:
    result = cli_store.run("worker", "--burst", "--retention", "7")
    assert result.exit_code == 2 and "'7' has no unit" in one_error_line(result)


@pytest.mark.parametrize("flag", ["--heartbeat-interval", "--poll-interval", "--shutdown-timeout"])
def test_worker_refuses_a_negative_interval(cli_store: CliStore, flag: str) -> None:
    result = cli_store.run("worker", "--burst", flag, "-1")
    assert result.exit_code == 2 and flag in one_error_line(result)
