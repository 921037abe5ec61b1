"""Flow control in the Redis store: a store from before it upgrades with its running
jobs counted, and a lease passes over a bounded number of held-back jobs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from driver_registry import DriverFactory, redis_store
from taskharbor.spec import Completion, EnqueueRequest, FakeClock, FlowLimits


@pytest.fixture
def make(tmp_path: Path) -> Iterator[DriverFactory]:
    with redis_store(tmp_path) as factory:
        yield factory


def test_a_store_from_before_flow_control_counts_its_running_jobs(make: DriverFactory) -> None:
    from taskharbor.drivers.redis import RedisDriver
    from taskharbor.drivers.redis.driver import SCHEMA_VERSION

    driver = make(FakeClock())
    assert isinstance(driver, RedisDriver)
    driver.enqueue([EnqueueRequest("t")])
    (running,) = driver.lease(["default"], 1, 30, "w")
    client = driver._client
    client.hset(driver.prefix + "meta", "version", "1")  # as version 1 left it: no counts
    client.delete(driver.prefix + "run:task")
    driver.migrate()
    driver.migrate()  # a second worker starting: counted once
    assert client.hget(driver.prefix + "meta", "version") == SCHEMA_VERSION
    held = driver.enqueue([EnqueueRequest("t", flow=FlowLimits(concurrency=1))])[0].job
    assert driver.lease(["default"], 10, 30, "w") == []
    assert not driver.complete([Completion(running.id, str(running.lease_token))])
    assert [job.id for job in driver.lease(["default"], 10, 30, "w")] == [held.id]


def test_a_lease_walks_every_chunk_of_held_back_jobs(make: DriverFactory) -> None:
    """The walk reads the ready set in growing chunks and passes over held-back jobs
    across their boundaries, without a bound, to fill its batch."""
    driver = make(FakeClock())
    limited = EnqueueRequest("t", flow=FlowLimits(key="k", key_concurrency=1))
    driver.enqueue([limited])
    assert len(driver.lease(["default"], 1, 30, "w")) == 1  # the key's one slot is taken
    results = driver.enqueue(
        [limited] * 999 + [EnqueueRequest("free")] + [limited] * 1_500 + [EnqueueRequest("late")]
    )
    free, late = results[999].job, results[-1].job
    assert [job.id for job in driver.lease(["default"], 3, 30, "w")] == [free.id, late.id]
