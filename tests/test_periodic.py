"""Periodic jobs in the engine: declaring, ticking from workers, DST, deployments, the kit."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import taskharbor as th
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.periodic import Ticker
from taskharbor.spec import Capabilities, FakeClock, InvalidRequest, JobState
from taskharbor.testing import Harness

START = datetime(2030, 1, 1, 12, 0, 0, 250000, tzinfo=UTC)


def memory_app(clock: FakeClock | None = None) -> th.App:
    return th.App(driver=MemoryDriver(clock=clock or FakeClock(START)))


# -- declaring -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"cron": "0 25 * * *"}, "bad cron expression '0 25"),
        ({"cron": "every day"}, "cron must be 5 fields"),
        ({"cron": "0 6 * * *", "tz": "Europe/Atlantis"}, "unknown time zone 'Europe/Atlantis'"),
        ({"cron": "0 6 * * *", "every": 60}, "exactly one of cron= and every= \\(got both\\)"),
        ({}, "exactly one of cron= and every= \\(got neither\\)"),
        ({"every": timedelta(milliseconds=1500)}, "whole number of seconds >= 1, not 1.5"),
        ({"every": timedelta(0)}, "whole number of seconds >= 1, not 0"),
        ({"every": "10m"}, "every must be a timedelta or seconds"),
        ({"every": 60, "tz": "Europe/Paris"}, "tz applies to cron schedules only"),
        ({"every": 60, "missed": "sometimes"}, "missed must be one of latest, none, all"),
    ],
)
def test_a_bad_declaration_is_an_invalid_request_naming_the_problem(
    options: dict[str, Any], match: str
) -> None:
    app = memory_app()
    report = app.task(name="report")(lambda kind: kind)
    with pytest.raises(InvalidRequest, match=match):
        app.periodic(report.s("daily"), name="daily-report", **options)
    assert len(app.schedules) == 0


def test_names_are_unique_per_app_and_default_to_the_task() -> None:
    app = memory_app()
    report = app.task(name="report")(lambda kind: kind)
    daily = app.periodic(report.s("daily"), cron="0 6 * * *", tz="Europe/Paris")
    assert (daily.name, daily.request.args, daily.tz) == ("report", ("daily",), "Europe/Paris")
    with pytest.raises(InvalidRequest, match="a schedule named 'report' is already declared"):
        app.periodic(report.s("weekly"), cron="0 6 * * 1")
    app.periodic(report.s("weekly"), cron="0 6 * * 1", name="weekly-report")
    assert app.schedules.names == ["report", "weekly-report"]


def test_arguments_are_checked_against_the_handler_at_declaration() -> None:
    app = memory_app()
    report = app.task(name="report")(lambda kind: kind)
    with pytest.raises(InvalidRequest, match="report"):
        app.periodic(report.s(), every=60)
    with pytest.raises(InvalidRequest, match="neither run_at nor idempotency_key"):
        app.periodic(report.s("x").options(idempotency_key="k"), every=60)


def test_the_decorator_schedules_a_task_or_a_plain_function() -> None:
    app = memory_app()

    @app.periodic(every=timedelta(minutes=10))
    @app.task(name="cleanup")
    def cleanup() -> None: ...

    @app.periodic(cron="*/5 * * * *", name="ping")
    def ping() -> str:
        return "pong"

    assert isinstance(cleanup, th.Task) and isinstance(ping, th.Task)
    assert [(s.name, s.request.task, s.expression) for s in app.schedules] == [
        ("cleanup", "cleanup", "every 600s"),
        ("ping", ping.name, "*/5 * * * *"),
    ]


# -- the testing kit and the tick in the handler -----------------------------------


def test_harness_runs_each_tick_once_and_the_handler_reads_its_tick() -> None:
    app = memory_app()
    seen: list[tuple[str | None, datetime | None]] = []

    @app.periodic(every=60, name="beat")
    @app.task(name="beat")
    def beat() -> None:
        job = th.current_job()
        seen.append((job.schedule, job.tick))

    with Harness(app, clock=FakeClock(START)) as harness:
        ran = harness.run_ticks(300)
        first = datetime(2030, 1, 1, 12, 1, tzinfo=UTC)
        ticks = [first + timedelta(minutes=m) for m in range(5)]
        assert seen == [("beat", tick) for tick in ticks]
        assert [job.run_at for job in ran] == ticks
        assert {job.state for job in ran} == {JobState.SUCCEEDED}
        assert harness.run_ticks(0) == []


def dst_ticks(start: datetime, cron: str, days: int) -> list[datetime]:
    app = memory_app()
    seen: list[datetime] = []

    @app.periodic(cron=cron, tz="Europe/Paris", name="nightly")
    @app.task(name="nightly")
    def nightly() -> None:
        tick = th.current_job().tick
        assert tick is not None
        seen.append(tick)

    with Harness(app, clock=FakeClock(start)) as harness:
        harness.run_ticks(days * 86400)
    return seen


def test_a_0230_schedule_runs_once_at_0300_on_the_spring_forward_day() -> None:
    """Europe/Paris skips 02:00-03:00 on 2030-03-31: 02:30 runs once, at 03:00 CEST."""
    assert dst_ticks(datetime(2030, 3, 30, 12, tzinfo=UTC), "30 2 * * *", 2) == [
        datetime(2030, 3, 31, 1, 0, tzinfo=UTC),  # 03:00 CEST
        datetime(2030, 4, 1, 0, 30, tzinfo=UTC),  # 02:30 CEST
    ]


def test_a_0230_schedule_runs_once_on_the_fall_back_day() -> None:
    """Europe/Paris repeats 02:00-03:00 on 2030-10-27: 02:30 runs once, the first time."""
    assert dst_ticks(datetime(2030, 10, 26, 12, tzinfo=UTC), "30 2 * * *", 2) == [
        datetime(2030, 10, 27, 0, 30, tzinfo=UTC),  # 02:30 CEST, not again at 02:30 CET
        datetime(2030, 10, 28, 1, 30, tzinfo=UTC),  # 02:30 CET
    ]


def test_an_hourly_schedule_follows_real_time_across_the_fall_back() -> None:
    """Hourly (and finer) expressions run at every matching instant: 02:30 twice, an hour apart."""
    ticks = dst_ticks(datetime(2030, 10, 26, 22, tzinfo=UTC), "30 * * * *", 1)
    assert [tick.strftime("%H:%M") for tick in ticks[:5]] == [
        "22:30",
        "23:30",
        "00:30",  # 02:30 CEST
        "01:30",  # 02:30 CET
        "02:30",
    ]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(ticks))


# -- workers ---------------------------------------------------------------------------


def test_a_worker_enqueues_and_runs_due_ticks_unless_told_not_to() -> None:
    clock = FakeClock(START)
    app = memory_app(clock)
    ran: list[datetime | None] = []

    @app.periodic(every=60, name="beat")
    @app.task(name="beat")
    def beat() -> None:
        ran.append(th.current_job().tick)

    th.Worker(app, periodic=False).run(burst=True, handle_signals=False)
    assert app.driver.list_schedules() == []
    th.Worker(app).run(burst=True, handle_signals=False)  # declares: the first tick is ahead
    clock.advance(60)
    th.Worker(app, periodic=False).run(burst=True, handle_signals=False)
    assert ran == []
    th.Worker(app).run(burst=True, handle_signals=False)
    assert ran == [datetime(2030, 1, 1, 12, 1, tzinfo=UTC)]


def test_a_paused_schedule_is_obeyed_at_the_next_pass_and_resumes_from_then() -> None:
    clock = FakeClock(START)
    app = memory_app(clock)
    app.periodic(app.task(name="beat")(lambda: None).s(), every=60, name="beat")
    ticker = Ticker(app)
    ticker.run()
    app.driver.pause_schedules(["beat"], True)
    clock.advance(600)
    result = ticker.run()
    assert result is not None and (result.jobs, result.next_tick) == ((), None)
    app.driver.pause_schedules(["beat"], False)
    clock.advance(60)
    result = ticker.run()
    assert result is not None and len(result.jobs) == 1


# -- deployments -------------------------------------------------------------------------


def deployment(driver: MemoryDriver, schedules: dict[str, dict[str, Any]]) -> Ticker:
    """An app version on the shared store: its tasks and schedules, and a worker's ticker."""
    app = th.App(driver=driver)
    for name, options in schedules.items():
        task = app.task(name=name)(lambda: None)
        app.periodic(task.s(), name=name, **options)
    return Ticker(app)


def test_schedules_added_changed_and_removed_between_deployments() -> None:
    clock = FakeClock(START)
    store = MemoryDriver(clock=clock)
    first = deployment(
        store, {"kept": {"every": 60}, "changed": {"every": 60}, "gone": {"every": 60}}
    )
    first.run()
    clock.set(datetime(2030, 1, 1, 12, 10, 30, tzinfo=UTC))
    first.run()  # each ran its 12:10 tick (the older ones folded into it)
    clock.advance(3600 * 3)  # the old version stops; the new one starts three hours later
    second = deployment(
        store, {"kept": {"every": 60}, "changed": {"every": 3600}, "added": {"every": 60}}
    )
    result = second.run()
    assert result is not None
    ran = sorted(job.task for job in result.jobs)
    # kept: its missed ticks fold into one (missed="latest"); changed: restarts from the
    # deployment, so its old every-minute ticks are dropped; added: starts at the deployment;
    # gone: no longer declared, so nothing runs it
    assert ran == ["kept"]
    records = {record.name: record for record in store.list_schedules()}
    now = clock.now()
    assert records["changed"].cursor == now and records["added"].cursor == now
    assert records["changed"].schedule.every == 3600
    assert records["gone"].cursor == datetime(2030, 1, 1, 12, 10, tzinfo=UTC)  # stale, stored
    clock.set(datetime(2030, 1, 1, 16, 0, 30, tzinfo=UTC))
    result = second.run()
    assert result is not None
    assert sorted(job.task for job in result.jobs) == ["added", "changed", "kept"]
    store.drop_schedules(["gone"])
    assert sorted(records) == ["added", "changed", "gone", "kept"]
    assert [r.name for r in store.list_schedules()] == ["added", "changed", "kept"]


def test_a_schedule_dropped_while_still_declared_comes_back_afresh() -> None:
    clock = FakeClock(START)
    app = memory_app(clock)
    app.periodic(app.task(name="beat")(lambda: None).s(), every=60, name="beat")
    ticker = Ticker(app)
    ticker.run()
    app.driver.drop_schedules(["beat"])
    clock.advance(120)
    result = ticker.run()
    assert result is not None and result.jobs == ()
    (record,) = app.driver.list_schedules()
    assert record.cursor == clock.now()
    assert app.list_jobs(state="available") == []


def test_import_taskharbor_and_interval_schedules_do_not_load_cronsim() -> None:
    code = (
        "import sys, taskharbor as th\n"
        "app = th.App('memory://')\n"
        "app.periodic(app.task(name='t')(lambda: None).s(), every=60)\n"
        "assert 'cronsim' not in sys.modules, 'cronsim loaded'\n"
        "app.periodic(app.task(name='u')(lambda: None).s(), cron='* * * * *')\n"
        "assert 'cronsim' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_store_without_schedules_warns_once_and_the_worker_still_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = MemoryDriver(clock=FakeClock(START))
    driver.capabilities = Capabilities()  # as a third-party store that keeps no schedules
    app = th.App(driver=driver)
    app.periodic(app.task(name="beat")(lambda: None).s(), every=60, name="beat")
    done = app.task(name="done")(lambda: "ok")
    job = done.enqueue()
    th.Worker(app).run(burst=True, handle_signals=False)
    th.Worker(app).run(burst=True, handle_signals=False)
    assert app.get_job(job).state == JobState.SUCCEEDED
    warnings = [r for r in caplog.records if "does not keep schedules" in r.getMessage()]
    assert len(warnings) == 2  # once per worker
