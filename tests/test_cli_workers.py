"""``taskharbor workers`` on every store: registered workers, their jobs, gone ones."""

from __future__ import annotations

import pytest
from test_cli_support import CliStore, cli_store

from taskharbor.conformance.workers import info

__all__ = ["cli_store"]


@pytest.fixture(autouse=True)
def _registry_kept(cli_store: CliStore) -> None:
    if not cli_store.driver.capabilities.workers:
        pytest.skip(f"{type(cli_store.driver).__name__} keeps no workers registry")


def test_workers_lists_each_worker_with_the_jobs_it_runs(cli_store: CliStore) -> None:
    cli_store.driver.register_workers([info("w-busy"), info("w-idle", host="host-b")])
    jobs = cli_store.enqueue("tasks.add", count=2)
    leased = cli_store.driver.lease(["default"], 2, 60.0, "w-busy")
    shape = cli_store.json("workers")
    busy, idle = shape["workers"]
    assert (busy["id"], busy["status"], busy["host"], busy["pid"]) == (
        "w-busy",
        "alive",
        "host-a",
        4242,
    )
    assert (busy["queues"], busy["concurrency"], busy["version"]) == (
        ["default", "mail"],
        8,
        "1.2.3",
    )
    assert busy["started_at"] == busy["last_seen_at"] == "2030-01-01T12:00:00+00:00"
    assert busy["running"] == [
        {"id": job.id, "task": "tasks.add", "queue": "default"} for job in jobs
    ]
    assert sorted(job.id for job in leased) == [job.id for job in jobs]
    assert (idle["id"], idle["host"], idle["running"]) == ("w-idle", "host-b", [])
    table = cli_store.ok("workers").stdout
    assert "w-busy" in table and "2/8" in table and f"{jobs[0].id}, {jobs[1].id}" in table
    assert max(len(line) for line in table.splitlines()) <= 80
    assert "alive" in table and "host-b" in table


def test_a_worker_unseen_for_its_ttl_is_shown_as_gone(cli_store: CliStore) -> None:
    cli_store.driver.register_workers([info("w-lost", ttl_seconds=30)])
    cli_store.clock.advance(30)
    (worker,) = cli_store.json("workers")["workers"]
    assert worker["status"] == "gone"
    assert "gone" in cli_store.ok("workers").stdout


def test_without_workers_it_says_how_they_appear(cli_store: CliStore) -> None:
    assert cli_store.json("workers") == {"workers": []}
    assert "no workers registered" in cli_store.ok("workers").stdout
