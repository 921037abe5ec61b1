"""``taskharbor schedules list|pause|resume|run|drop`` on every store."""

from __future__ import annotations

from datetime import UTC, datetime

from test_cli_support import CliStore, cli_store, one_error_line

from taskharbor.periodic import Ticker
from taskharbor.spec import JobState

__all__ = ["cli_store"]


def declare(cli_store: CliStore, *names: str) -> None:
    """Declare every-minute schedules on the app and store them, as a worker would."""
    for name in names:
        task = cli_store.app.task(name=f"tasks.{name}")(lambda: None)
        cli_store.app.periodic(task.s(), every=60, name=name)
    Ticker(cli_store.app).run()


def test_list_shows_expression_zone_next_tick_and_last_job(cli_store: CliStore) -> None:
    declare(cli_store, "beat")
    cli_store.app.periodic(
        cli_store.app.task(name="tasks.report")(lambda: None).s(),
        cron="30 2 * * *",
        tz="Europe/Paris",
        name="report",
    )
    Ticker(cli_store.app).run()
    cli_store.clock.advance(60)
    Ticker(cli_store.app).run()
    shape = cli_store.json("schedules", "list")
    beat, report = shape["schedules"]
    assert (beat["name"], beat["expression"], beat["tz"], beat["status"]) == (
        "beat",
        "every 60s",
        "UTC",
        "active",
    )
    assert beat["next_tick"] == "2030-01-01T12:02:00+00:00"
    assert beat["last_job"]["state"] == "available"
    assert (report["expression"], report["tz"], report["last_job"]) == (
        "30 2 * * *",
        "Europe/Paris",
        None,
    )
    assert report["next_tick"] == "2030-01-02T01:30:00+00:00"
    table = cli_store.ok("schedules", "list").stdout
    assert "every 60s" in table and "Europe/Paris" in table and "available" in table
    assert max(len(line) for line in table.splitlines()) <= 80


def test_pause_and_resume_are_stored_and_obeyed(cli_store: CliStore) -> None:
    declare(cli_store, "beat")
    assert cli_store.ok("schedules", "pause", "beat").stdout == "beat: paused\n"
    (record,) = cli_store.driver.list_schedules()
    assert record.paused
    cli_store.clock.advance(300)
    result = Ticker(cli_store.app).run()
    assert result is not None and result.jobs == ()
    shape = cli_store.json("schedules", "resume", "beat")
    assert shape["schedules"][0]["paused"] is False
    assert shape["schedules"][0]["cursor"] == cli_store.clock.now().isoformat()


def test_run_enqueues_one_job_now(cli_store: CliStore) -> None:
    declare(cli_store, "beat")
    job = cli_store.json("schedules", "run", "beat")
    assert (job["task"], job["state"]) == ("tasks.beat", JobState.AVAILABLE.value)
    assert cli_store.json("schedules", "list")["schedules"][0]["last_job"]["id"] == job["id"]


def test_removed_schedules_are_stale_and_dropped_with_one_command(cli_store: CliStore) -> None:
    declare(cli_store, "kept", "removed")
    cli_store.app.schedules._by_name.pop("removed")  # the next deployment's code
    statuses = {s["name"]: s["status"] for s in cli_store.json("schedules", "list")["schedules"]}
    assert statuses == {"kept": "active", "removed": "stale"}
    assert "stale" in cli_store.ok("schedules", "list").stdout
    assert cli_store.json("schedules", "drop", "--stale") == {"dropped": ["removed"]}
    assert [r.name for r in cli_store.driver.list_schedules()] == ["kept"]
    assert cli_store.ok("schedules", "drop", "--stale").stdout == "no stale schedules\n"


def test_unknown_names_and_bad_usage_are_one_line_errors(cli_store: CliStore) -> None:
    declare(cli_store, "beat")
    for args in (("pause", "beat", "nope"), ("run", "nope"), ("drop", "nope")):
        result = cli_store.run("schedules", *args)
        assert result.exit_code == 1
        assert "schedule 'nope' not found" in one_error_line(result)
    assert not cli_store.driver.list_schedules()[0].paused
    result = cli_store.run("schedules", "drop")
    assert result.exit_code == 2
    assert "give schedule names or --stale" in one_error_line(result)


def test_an_empty_store_says_how_schedules_get_there(cli_store: CliStore) -> None:
    assert "a worker stores" in cli_store.ok("schedules", "list").stdout
    assert cli_store.json("schedules", "list") == {"schedules": []}
    assert datetime(2030, 1, 1, tzinfo=UTC) < cli_store.clock.now()
