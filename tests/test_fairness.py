"""Fairness between a worker's queues: the rotation's exact picks, and workers that
share their slots by it (deterministic: one slot, so each lease takes one job)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from test_cli_support import CliStore, cli_store, one_error_line
from test_engine_support import burst, make_app

import taskharbor as th
from driver_registry import DriverFactory
from taskharbor.drivers.memory import MemoryDriver
from taskharbor.fairness import MAX_WEIGHT, Rotation, queue_weights
from taskharbor.spec import JobRecord

__all__ = ["cli_store"]


def picks(rotation: Rotation, count: int) -> str:
    return "".join(rotation.pick() for _ in range(count))


def test_equal_weights_take_turns_in_the_order_listed() -> None:
    assert picks(Rotation({"a": 1, "b": 1, "c": 1}), 7) == "abcabca"


def test_weights_give_shares_spread_out() -> None:
    assert picks(Rotation({"a": 3, "b": 1}), 12) == "aaba" * 3
    sequence = picks(Rotation({"a": 3, "b": 1}), 400)
    assert sequence.count("a") == 300
    assert all("b" in sequence[i : i + 4] for i in range(0, 397))


def test_a_split_offers_each_queue_its_share_the_queue_whose_turn_it_is_first() -> None:
    rotation = Rotation({"a": 1, "b": 1})
    assert list(rotation.split(3).items()) == [("a", 2), ("b", 1)]
    assert list(rotation.split(3).items()) == [("b", 2), ("a", 1)]
    assert Rotation({"a": 1, "b": 4}).split(5) == {"b": 4, "a": 1}


@pytest.mark.parametrize(
    ("queues", "match"),
    [
        ({"a": 0}, "from 1 to"),
        ({"a": MAX_WEIGHT + 1}, "from 1 to"),
        ({"a": 1.5}, "must be an int"),
        ({"a": True}, "must be an int"),
        ({"": 1}, "queue name"),
    ],
)
def test_a_bad_weight_is_refused_naming_the_queue(queues: dict[str, object], match: str) -> None:
    with pytest.raises(th.InvalidRequest, match=match):
        queue_weights(queues)


def run_order(driver_factory: DriverFactory, queues: object, bulk: int, urgent: int) -> list[str]:
    """The queues of the jobs a one-slot worker runs, in order: ``bulk`` jobs enqueued
    first, then ``urgent`` ones, with the same priority."""
    app = make_app(driver_factory)
    ran: list[str] = []

    @app.task(queue="bulk")
    def heavy() -> None:
        ran.append("bulk")

    @app.task(queue="urgent")
    def light() -> None:
        ran.append("urgent")

    for _ in range(bulk):
        heavy.enqueue()
    for _ in range(urgent):
        light.enqueue()
    burst(app, queues=queues, concurrency=1)
    return ran


def test_a_backlog_in_one_queue_does_not_starve_another(driver_factory: DriverFactory) -> None:
    ran = run_order(driver_factory, ["bulk", "urgent"], bulk=10, urgent=3)
    assert ran == ["bulk", "urgent"] * 3 + ["bulk"] * 7


def test_weights_share_the_slots_in_proportion(driver_factory: DriverFactory) -> None:
    ran = run_order(driver_factory, {"bulk": 1, "urgent": 3}, bulk=4, urgent=9)
    assert ran[:8] == ["urgent", "bulk", "urgent", "urgent"] * 2
    assert sorted(ran) == ["bulk"] * 4 + ["urgent"] * 9


def test_a_slot_its_queue_cannot_fill_goes_to_the_others(driver_factory: DriverFactory) -> None:
    assert run_order(driver_factory, ["urgent", "bulk"], bulk=5, urgent=0) == ["bulk"] * 5


class CountingLeases(MemoryDriver):
    """A memory store that records each lease call's queues and limit."""

    def __init__(self) -> None:
        super().__init__()
        self.leases: list[tuple[tuple[str, ...], int]] = []

    def lease(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker_id: str
    ) -> list[JobRecord]:
        self.leases.append((tuple(queues), limit))
        return super().lease(queues, limit, lease_seconds, worker_id)


def test_the_slots_left_go_to_one_lease_over_every_queue_in_the_same_pass() -> None:
    driver = CountingLeases()
    app = th.App(driver=driver)
    app.task(name="job", queue="bulk")(lambda: None).enqueue()
    burst(app, queues=["urgent", "bulk", "other"], concurrency=2)
    # urgent and bulk are asked for their share, then the slot urgent left goes to all
    assert driver.leases[:3] == [
        (("urgent",), 1),
        (("bulk",), 1),
        (("urgent", "bulk", "other"), 1),
    ]


def test_no_lease_over_every_queue_when_each_was_asked_and_none_had_more() -> None:
    driver = CountingLeases()
    app = th.App(driver=driver)
    app.task(name="job", queue="bulk")(lambda: None).enqueue()
    burst(app, queues=["urgent", "bulk"], concurrency=4)
    assert driver.leases[:2] == [(("urgent",), 2), (("bulk",), 2)]
    assert all(len(queues) == 1 for queues, _ in driver.leases)


def test_worker_weights_on_the_command_line(cli_store: CliStore) -> None:
    result = cli_store.ok("worker", "--burst", "--json", "-q", "a", "-q", "b", "--weight", "b=4")
    started = json.loads(result.stdout.splitlines()[0])
    assert started["queue_weights"] == {"a": 1, "b": 4}


@pytest.mark.parametrize(
    ("weight", "match"),
    [("c=2", "not one of the worker's queues"), ("a", "QUEUE=N"), ("a=0", "QUEUE=N")],
)
def test_a_bad_weight_on_the_command_line_is_a_usage_error(
    cli_store: CliStore, weight: str, match: str
) -> None:
    line = one_error_line(cli_store.run("worker", "--burst", "-q", "a", "--weight", weight))
    assert match in line
