"""Flow control in the Redis store: a store from before it upgrades with its running
jobs counted, one from before groups with its limited jobs moved into them, and a lease
passes over any number of held-back jobs."""

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


def test_a_store_from_before_groups_moves_its_limited_jobs_into_them(make: DriverFactory) -> None:
    """Version 3 kept every available job in its queue's ready set; ``migrate`` moves the
    limited ones into their groups' sets, once, each group standing in the ready set by
    its first member, and leases then take what they took before."""
    from taskharbor.drivers.redis import RedisDriver
    from taskharbor.drivers.redis.driver import SCHEMA_VERSION

    driver = make(FakeClock())
    assert isinstance(driver, RedisDriver)
    key = FlowLimits(key="k", key_concurrency=1)
    jobs = [
        job.job
        for job in driver.enqueue(
            [
                EnqueueRequest("t", flow=key),
                EnqueueRequest("t", flow=key, priority=1),
                EnqueueRequest("t"),
                EnqueueRequest("u", flow=key),
                EnqueueRequest("t", queue="other", flow=key),
            ]
        )
    ]
    client, prefix = driver._client, driver.prefix
    groups = sorted(client.keys(prefix + "g:*"))
    assert len(groups) == 3  # (default, t), (default, u), (other, t): one limit text
    entries = {q: client.zrange(f"{prefix}ready:{q}", 0, -1) for q in ("default", "other")}
    assert [len(entries["default"]), len(entries["other"])] == [3, 1]
    for group in groups:  # as version 3 left them: every available job in the ready set
        queue = group[len(prefix) + 2 :].split("\0")[0]
        members = client.zrange(group, 0, -1, withscores=True)
        client.zadd(f"{prefix}ready:{queue}", dict(members))
        client.delete(group)
    client.hset(prefix + "meta", "version", "3")
    driver.migrate()
    driver.migrate()  # a second worker starting: moved once
    assert client.hget(prefix + "meta", "version") == SCHEMA_VERSION
    assert sorted(client.keys(prefix + "g:*")) == groups
    assert {q: client.zrange(f"{prefix}ready:{q}", 0, -1) for q in entries} == entries
    leased = driver.lease(["default", "other"], 10, 30, "w")
    assert [job.id for job in leased] == [jobs[1].id, jobs[2].id]
