"""Paused queues in the engine and the CLI: app.pause_queue / resume_queue / list_queues,
taskharbor queues list|pause|resume, and workers obeying a pause stored by another."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from migration_support import postgres_before, sqlite_before
from test_cli_support import CliStore, cli_store, one_error_line
from test_engine_support import burst, make_app, running_worker

import taskharbor as th
from driver_registry import DriverFactory
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.spec import Capabilities, Driver, JobRecord, JobState, SchemaError

__all__ = ["cli_store"]


def pausing_app(driver_factory: DriverFactory) -> th.App:
    """An app on the driver under test, which must keep paused queues."""
    app = make_app(driver_factory)
    if not app.driver.capabilities.queue_pause:
        pytest.skip(f"{type(app.driver).__name__} does not declare capability 'queue_pause'")
    return app


def pausing_store(cli_store: CliStore) -> CliStore:
    if not cli_store.driver.capabilities.queue_pause:
        pytest.skip(f"{type(cli_store.driver).__name__} does not declare capability 'queue_pause'")
    return cli_store


def test_a_worker_leaves_a_paused_queue_alone_until_it_is_resumed(
    driver_factory: DriverFactory,
) -> None:
    app = pausing_app(driver_factory)
    ran: list[str] = []

    @app.task(queue="a")
    def in_a() -> None:
        ran.append("a")

    @app.task(queue="b")
    def in_b() -> None:
        ran.append("b")

    (status,) = app.pause_queue("a")
    assert status.paused and status.name == "a"
    held = in_a.enqueue()
    in_b.enqueue()
    burst(app, queues=["a", "b"])
    assert ran == ["b"]
    assert app.get_job(held).state == JobState.AVAILABLE
    (status,) = app.resume_queue("a")
    assert not status.paused and status.counts[JobState.AVAILABLE] == 1
    burst(app, queues=["a", "b"])
    assert ran == ["b", "a"]


def test_a_running_worker_stops_leasing_at_its_next_poll(driver_factory: DriverFactory) -> None:
    app = pausing_app(driver_factory)
    done: list[int] = []

    @app.task(queue="a")
    def work(n: int) -> None:
        done.append(n)

    with running_worker(app, queues=["a"]):
        app.wait(work.enqueue(1), timeout=60)
        app.pause_queue("a")
        # a pause acts on the leases that begin after it: none of these runs
        held = [work.enqueue(n) for n in range(2, 5)]
        time.sleep(0.2)  # many polls of the worker (FAST): it asks, and gets nothing
        assert {app.get_job(job).state for job in held} == {JobState.AVAILABLE}
        app.resume_queue("a")
        for job in held:
            app.wait(job, timeout=60)
    assert sorted(done) == [1, 2, 3, 4]


def test_list_queues_names_every_queue_with_jobs_or_a_pause(driver_factory: DriverFactory) -> None:
    app = pausing_app(driver_factory)

    @app.task(queue="mail")
    def send() -> None: ...

    send.enqueue()
    send.options(delay=60).enqueue()
    app.pause_queue("reports", "reports")
    listed = {status.name: status for status in app.list_queues()}
    assert sorted(listed) == ["mail", "reports"]
    assert not listed["mail"].paused
    assert listed["mail"].counts[JobState.AVAILABLE] == 1
    assert listed["mail"].counts[JobState.SCHEDULED] == 1
    assert listed["reports"].paused and sum(listed["reports"].counts.values()) == 0


def test_a_store_without_the_capability_refuses_a_pause_naming_it() -> None:
    class NoPause(MemoryDriver):
        capabilities = Capabilities(schedules=True)

    app = th.App(driver=NoPause())
    with pytest.raises(th.InvalidRequest, match="queue_pause"):
        app.pause_queue("a")
    assert app.list_queues() == []


def test_cli_pause_list_and_resume(cli_store: CliStore) -> None:
    pausing_store(cli_store)
    cli_store.enqueue(count=2, queue="mail")
    assert cli_store.ok("queues", "pause", "mail", "idle").stdout == (
        "mail: paused (2 job(s) ready)\nidle: paused (0 job(s) ready)\n"
    )
    assert [job.id for job in cli_store.lease_all("mail")] == []
    shape = cli_store.json("queues", "list")
    assert [(q["name"], q["paused"], q["total"]) for q in shape["queues"]] == [
        ("idle", True, 0),
        ("mail", True, 2),
    ]
    assert shape["queues"][1]["paused_at"] == "2030-01-01T12:00:00+00:00"
    assert shape["queues"][1]["counts"]["available"] == 2
    table = cli_store.ok("queues", "list").stdout
    assert "paused" in table and "2030-01-01 12:00:00" in table
    assert max(len(line) for line in table.splitlines()) <= 80
    resumed = cli_store.json("queues", "resume", "mail")
    assert resumed["queues"][0]["paused"] is False
    assert len(cli_store.lease_all("mail")) == 2


def test_cli_needs_queue_names_and_says_when_there_are_no_queues(cli_store: CliStore) -> None:
    assert "Missing argument" in one_error_line(cli_store.run("queues", "pause"))
    assert cli_store.ok("queues", "list").stdout.startswith("no queues")
    assert cli_store.json("queues", "list") == {"queues": []}


def test_a_sqlite_file_without_paused_queues_is_upgraded_with_its_jobs(tmp_path: Path) -> None:
    old, kept = sqlite_before(tmp_path / "old.db", 6)
    with pytest.raises(SchemaError, match="older than"):
        old.paused_queues()
    upgraded_keeps_its_jobs_and_pauses(old, kept)
    old.close()


@pytest.mark.postgres
def test_a_postgres_schema_without_paused_queues_is_upgraded_with_its_jobs() -> None:
    with postgres_before("th_paused_queues_migration", "paused_queues", 7) as (old, kept):
        with pytest.raises(SchemaError, match=r"missing migrations \[7\]"):
            old.paused_queues()
        upgraded_keeps_its_jobs_and_pauses(old, kept)


def upgraded_keeps_its_jobs_and_pauses(old: Driver, kept: JobRecord) -> None:
    old.migrate()
    old.pause_queues(["a"], True)
    assert old.lease(["a"], 1, 30.0, "w") == []
    assert old.get([kept.id])[0].state == JobState.AVAILABLE
