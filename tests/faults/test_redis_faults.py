"""Faults on Redis, each against a PRIVATE redis-server this module starts on a free port
in a temporary folder (AOF with ``appendfsync always``), never the shared one on 6379:

* the crash harness (a worker killed with SIGKILL mid-batch) and the fleet, on a
  store that declares ``persistent``;
* the server killed with SIGKILL and restarted from its AOF: every acknowledged
  call is there, and work goes on;
* ``CLIENT KILL`` of the driver's connections, the pub/sub listener's included:
  calls go on, and an idle waiter is still woken.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("redis")
import redis

from taskharbor.conformance.processes import CrashPlan, run_crash, run_fleet
from taskharbor.drivers.redis import RedisDriver
from taskharbor.spec import Completion, EnqueueRequest, JobState

pytestmark = [
    pytest.mark.timing,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server here"),
]


class PrivateRedis:
    """A redis-server of this test's own, persistent (AOF, fsync at every write)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)),
                *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
                *("--logfile", str(self.folder / "redis.log")),
            ],
        )
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError("the private redis-server did not start")
        # Loading the AOF after a restart answers LOADING errors until done.
        while client.info("persistence").get("loading"):
            time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """SIGKILL: the server dies without a chance to write anything more."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def admin(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    private = PrivateRedis(tmp_path)
    private.start()
    try:
        yield private
    finally:
        private.stop()


def open_store(server: PrivateRedis) -> RedisDriver:
    driver = RedisDriver(server.url, prefix="faults")
    driver.migrate()
    return driver


def test_a_server_with_fsync_at_every_write_is_declared_persistent(server: PrivateRedis) -> None:
    store = open_store(server)
    assert store.capabilities.persistent
    assert store.durability is not None and "appendfsync always" in store.durability.describe()
    store.close()


def test_the_shared_server_without_persistence_is_not_declared_persistent() -> None:
    shared = RedisDriver(prefix="faults_probe")
    try:
        shared.migrate()
    except Exception as exc:  # no shared server here: nothing to check
        pytest.skip(f"no Redis on 127.0.0.1:6379: {exc}")
    assert shared.durability is not None
    assert shared.capabilities.persistent is shared.durability.persistent
    shared.close()


def test_a_worker_killed_mid_batch_loses_nothing(server: PrivateRedis, tmp_path: Path) -> None:
    (tmp_path / "crash").mkdir()
    run_crash(lambda: open_store(server), tmp_path / "crash", CrashPlan())


def test_a_fleet_of_processes_never_leases_a_job_twice(
    server: PrivateRedis, tmp_path: Path
) -> None:
    (tmp_path / "fleet").mkdir()
    run_fleet(lambda: open_store(server), tmp_path / "fleet")


def test_a_server_killed_and_restarted_keeps_every_acknowledged_call(
    server: PrivateRedis,
) -> None:
    store = open_store(server)
    enqueued = store.enqueue([EnqueueRequest("t", args=(n,)) for n in range(50)])
    leased = store.lease(["default"], 20, 600, "w")
    assert (
        store.complete(
            [Completion(job.id, job.lease_token or "", n) for n, job in enumerate(leased[:10])]
        )
        == []
    )
    counts = dict(store.count())
    store.close()

    server.kill()
    server.start()

    store = open_store(server)
    assert dict(store.count()) == counts
    again = store.get([job.job.id for job in enqueued])
    assert [job.state for job in again[:10]] == [JobState.SUCCEEDED] * 10
    assert [job.result for job in again[:10]] == list(range(10))
    running = leased[10:]
    assert (
        store.complete([Completion(job.id, job.lease_token or "", None) for job in running]) == []
    )
    rest = store.lease(["default"], 100, 600, "w")
    assert len(rest) == 30
    assert store.complete([Completion(job.id, job.lease_token or "", None) for job in rest]) == []
    assert dict(store.count()) == {("default", JobState.SUCCEEDED): 50}
    store.close()


def test_killed_client_connections_are_transient_and_waiters_still_wake(
    server: PrivateRedis,
) -> None:
    store = open_store(server)
    admin = server.admin()
    store.wait_for_jobs(["default"], 0.01)  # the listener starts
    subscribed_before = {client["id"] for client in admin.client_list(_type="pubsub")}
    for kind in ("normal", "pubsub"):
        admin.execute_command("CLIENT", "KILL", "TYPE", kind)
    deadline = time.monotonic() + 30
    while True:  # a killed connection fails one call at most; the next one reconnects
        try:
            store.enqueue([EnqueueRequest("t")])
            break
        except Exception:
            assert time.monotonic() < deadline, "the driver never reconnected"
            time.sleep(0.05)
    store.lease(["default"], 10, 600, "w")
    both = ["{faults}:done", "{faults}:wake"]

    def subscribed_again() -> bool:
        """A pub/sub connection made after the kill holds both channels.  (The killed
        connection's channels may still be listed for a moment after CLIENT KILL.)"""
        clients = admin.client_list(_type="pubsub")
        new = any(client["id"] not in subscribed_before for client in clients)
        return new and sorted(admin.pubsub_channels()) == both

    for _ in range(200):  # the listener subscribes again, to both channels
        if subscribed_again():
            break
        time.sleep(0.05)
    assert subscribed_again(), (admin.client_list(_type="pubsub"), admin.pubsub_channels())

    other = open_store(server)
    started = time.monotonic()
    waiting = threading.Thread(target=store.wait_for_jobs, args=(["default"], 30))
    waiting.start()
    time.sleep(0.2)
    other.enqueue([EnqueueRequest("t")])
    waiting.join(30)
    assert not waiting.is_alive()
    assert time.monotonic() - started < 20, "the waiter slept its whole timeout"
    other.close()
    store.close()
    admin.close()
