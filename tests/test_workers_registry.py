"""The workers registry: registrations refused by name (spec/workers.py), and workers
that register, are seen, show their jobs and deregister (engine/registry.py)."""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

import pytest
from test_engine_support import EVENTUALLY, burst, eventually, make_app, running_worker

import taskharbor as th
from driver_registry import DriverFactory
from taskharbor.conformance.workers import info
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.spec import FakeClock, InvalidRequest


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pid": -1}, "pid must be an int >= 0"),
        ({"pid": "12"}, "pid must be an int"),
        ({"queues": ()}, "non-empty list of queue names"),
        ({"queues": ["default"]}, "queues must be a tuple"),
        ({"concurrency": 0}, "concurrency must be between 1"),
        ({"concurrency": 1.5}, "concurrency must be an int"),
        ({"version": ""}, "worker version must be a non-empty string"),
        ({"host": "h\x00"}, "worker host: contains a NUL"),
        ({"ttl_seconds": 0}, "ttl_seconds must be positive"),
    ],
)
def test_a_bad_registration_is_refused_naming_the_field(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        info(**fields)


def test_a_running_worker_is_registered_with_its_jobs_and_gone_once_stopped(
    driver_factory: DriverFactory,
) -> None:
    app = make_app(driver_factory)
    if not app.driver.capabilities.workers:
        pytest.skip(f"{type(app.driver).__name__} keeps no workers registry")
    started = threading.Event()
    release = threading.Event()

    @app.task()
    def hold() -> None:
        started.set()
        release.wait(EVENTUALLY)

    job = hold.enqueue()
    with running_worker(app, queues=["default", "other"], concurrency=3, lease=10.0) as worker:
        assert started.wait(EVENTUALLY)
        (record,) = app.list_workers()
        assert (record.id, record.pid, record.queues) == (
            worker.worker_id,
            os.getpid(),
            ("default", "other"),
        )
        assert (record.concurrency, record.ttl_seconds, record.gone) == (3, 30.0, False)
        assert record.running == (job.id,)
        assert record.version == th.__version__
        seen = record.last_seen_at
        eventually(lambda: app.list_workers()[0].last_seen_at > seen, what="a heartbeat")
        release.set()
        eventually(lambda: app.list_workers()[0].running == (), what="the job's end")
    assert app.list_workers() == []  # a clean stop deregisters


def test_an_idle_worker_forgotten_by_the_store_registers_again() -> None:
    clock = FakeClock()
    app = th.App(driver=MemoryDriver(clock))
    with running_worker(app, lease=1.0) as worker:
        eventually(lambda: len(app.list_workers()) == 1, what="the registration")
        clock.advance(2 * 3.0)  # twice its ttl: the next registry call forgets it
        app.driver.heartbeat_workers(["someone-else"])
        assert app.list_workers() == []
        eventually(lambda: [w.id for w in app.list_workers()] == [worker.worker_id], what="again")


class NoRegistry(MemoryDriver):
    capabilities = dataclasses.replace(MemoryDriver.capabilities, workers=False)


def test_without_a_registry_workers_run_and_listing_them_is_a_clear_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = th.App(driver=NoRegistry())
    done = app.task(name="done")(lambda: 1).enqueue()
    burst(app)
    assert app.get_job(done).state is th.JobState.SUCCEEDED
    assert not [r for r in caplog.records if "registry" in r.getMessage()]
    with pytest.raises(th.InvalidRequest, match="capability 'workers'"):
        app.list_workers()
