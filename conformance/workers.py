"""Rules of the workers registry (capability ``workers``; :mod:`taskharbor.spec.workers`)."""

from __future__ import annotations

from typing import Any

import pytest

from taskharbor.spec import InvalidRequest, LeaseRef, WorkerInfo, WorkerRecord

from .harness import LEASE_SECONDS, Harbor, HarborFixture, requires

TTL = 90.0


def info(worker_id: str = "w-1", **fields: Any) -> WorkerInfo:
    """A worker's registration, with ``fields`` as :class:`WorkerInfo`'s."""
    values: dict[str, Any] = {
        "host": "host-a",
        "pid": 4242,
        "queues": ("default", "mail"),
        "concurrency": 8,
        "version": "1.2.3",
        "ttl_seconds": TTL,
    }
    return WorkerInfo(worker_id, **{**values, **fields})


def listed(harbor: Harbor) -> dict[str, WorkerRecord]:
    return {worker.id: worker for worker in harbor.driver.list_workers()}


class WorkerRegistryRules(HarborFixture):
    def test_a_registered_worker_is_listed_as_it_registered(self, harbor: Harbor) -> None:
        (record,) = harbor.driver.register_workers([info()])
        expected = WorkerRecord(
            id="w-1",
            host="host-a",
            pid=4242,
            queues=("default", "mail"),
            concurrency=8,
            version="1.2.3",
            ttl_seconds=TTL,
            started_at=harbor.now(),
            last_seen_at=harbor.now(),
        )
        assert record == expected
        assert harbor.driver.list_workers() == [expected]

    def test_workers_are_listed_by_id(self, harbor: Harbor) -> None:
        harbor.driver.register_workers([info("w-b"), info("w-c")])
        harbor.driver.register_workers([info("w-a")])
        assert [worker.id for worker in harbor.driver.list_workers()] == ["w-a", "w-b", "w-c"]

    def test_registering_a_known_id_again_replaces_it(self, harbor: Harbor) -> None:
        harbor.driver.register_workers([info(pid=1)])
        harbor.advance(5)
        (again,) = harbor.driver.register_workers([info(pid=2, queues=("other",))])
        assert (again.pid, again.queues, again.started_at) == (2, ("other",), harbor.now())
        assert harbor.driver.list_workers() == [again]

    def test_a_worker_heartbeat_marks_it_seen_and_names_the_unknown(self, harbor: Harbor) -> None:
        harbor.driver.register_workers([info()])
        started = harbor.now()
        harbor.advance(30)
        assert harbor.driver.heartbeat_workers(["nobody", "w-1", "ghost"]) == ["nobody", "ghost"]
        worker = listed(harbor)["w-1"]
        assert (worker.started_at, worker.last_seen_at) == (started, harbor.now())
        assert "nobody" not in listed(harbor)  # a heartbeat never registers

    def test_a_lease_heartbeat_marks_its_holder_seen(self, harbor: Harbor) -> None:
        harbor.driver.register_workers([info("w-1"), info("w-2")])
        before = harbor.now()
        job = harbor.enqueue()
        (leased,) = harbor.driver.lease(["default"], 1, LEASE_SECONDS, "w-1")
        assert leased.id == job.id and leased.lease_token is not None
        harbor.advance(20)
        harbor.driver.heartbeat([LeaseRef(leased.id, leased.lease_token)], LEASE_SECONDS)
        workers = listed(harbor)
        assert workers["w-1"].last_seen_at == harbor.now()
        assert workers["w-2"].last_seen_at == before  # holds no lease: not seen

    def test_a_refused_lease_heartbeat_marks_nobody_seen(self, harbor: Harbor) -> None:
        harbor.driver.register_workers([info("w-1")])
        before = harbor.now()
        harbor.enqueue()
        (leased,) = harbor.driver.lease(["default"], 1, LEASE_SECONDS, "w-1")
        harbor.advance(10)
        result = harbor.driver.heartbeat([LeaseRef(leased.id, "stale-token")], LEASE_SECONDS)
        assert len(result.lost) == 1
        assert listed(harbor)["w-1"].last_seen_at == before

    def test_running_lists_the_live_leases_a_worker_holds(self, harbor: Harbor) -> None:
        harbor.driver.register_workers([info("w-1"), info("w-2")])
        jobs = [harbor.enqueue() for _ in range(4)]
        mine = harbor.driver.lease(["default"], 3, LEASE_SECONDS, "w-1")
        theirs = harbor.driver.lease(["default"], 1, LEASE_SECONDS, "w-2")
        assert sorted(job.id for job in mine + theirs) == [job.id for job in jobs]
        harbor.complete(mine[1], "done")
        workers = listed(harbor)
        assert workers["w-1"].running == tuple(sorted([mine[0].id, mine[2].id]))
        assert workers["w-2"].running == (theirs[0].id,)

    def test_a_worker_unseen_for_its_ttl_is_gone(self, harbor: Harbor) -> None:
        harbor.driver.register_workers([info(ttl_seconds=TTL)])
        harbor.advance(TTL - 0.000001)
        assert listed(harbor)["w-1"].gone is False
        harbor.advance(0.000001)
        assert listed(harbor)["w-1"].gone is True
        assert harbor.driver.heartbeat_workers(["w-1"]) == []  # seen again: alive
        assert listed(harbor)["w-1"].gone is False

    def test_a_worker_unseen_for_twice_its_ttl_is_forgotten(self, harbor: Harbor) -> None:
        harbor.driver.register_workers([info("w-old", ttl_seconds=10), info("w-new")])
        harbor.advance(20 - 0.000001)
        assert harbor.driver.heartbeat_workers(["w-new"]) == []
        assert set(listed(harbor)) == {"w-old", "w-new"}  # gone, still shown
        harbor.advance(0.000001)
        assert listed(harbor)["w-old"].gone is True  # reading forgets nothing
        assert harbor.driver.heartbeat_workers(["w-new", "w-old"]) == ["w-old"]
        assert set(listed(harbor)) == {"w-new"}

    @pytest.mark.parametrize("call", ["register", "deregister"])
    def test_registering_and_deregistering_forget_the_long_unseen_too(
        self, harbor: Harbor, call: str
    ) -> None:
        harbor.driver.register_workers([info("w-old", ttl_seconds=10)])
        harbor.advance(20)
        if call == "register":
            harbor.driver.register_workers([info("w-new")])
        else:
            harbor.driver.deregister_workers(["w-new"])
        assert "w-old" not in listed(harbor)

    def test_deregistering_deletes_and_ignores_unknown_ids(self, harbor: Harbor) -> None:
        harbor.driver.register_workers([info("w-1"), info("w-2")])
        harbor.driver.deregister_workers(["w-1", "never"])
        assert list(listed(harbor)) == ["w-2"]
        assert harbor.driver.heartbeat_workers(["w-1"]) == ["w-1"]

    @pytest.mark.parametrize(
        "call",
        [
            lambda d: d.register_workers([]),
            lambda d: d.register_workers([info(), info()]),
            lambda d: d.register_workers(["w-1"]),
            lambda d: d.heartbeat_workers([]),
            lambda d: d.heartbeat_workers(["w-1", "w-1"]),
            lambda d: d.heartbeat_workers([""]),
            lambda d: d.deregister_workers([]),
            lambda d: d.deregister_workers([3]),
        ],
        ids=[
            "register-nothing",
            "register-twice",
            "register-not-info",
            "heartbeat-nothing",
            "heartbeat-twice",
            "heartbeat-empty-id",
            "deregister-nothing",
            "deregister-not-a-name",
        ],
    )
    def test_bad_worker_calls_are_refused_and_change_nothing(
        self, harbor: Harbor, call: Any
    ) -> None:
        harbor.driver.register_workers([info()])
        before = harbor.driver.list_workers()
        harbor.advance(5)
        with pytest.raises(InvalidRequest):
            call(harbor.driver)
        assert harbor.driver.list_workers() == before


for _name, _test in list(vars(WorkerRegistryRules).items()):
    if _name.startswith("test_"):
        requires("workers")(_test)
