"""LISTEN/NOTIFY wake-ups: fast, per queue, surviving a dropped connection; polling without."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from test_engine_support import EVENTUALLY
from test_postgres_support import MakeDriver, make_driver, unique_schema

from driver_registry import POSTGRES_URL, skip_without_postgres
from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.drivers.postgres.notify import Listener
from taskharbor.drivers.postgres.tables import Tables
from taskharbor.spec import Completion, EnqueueRequest

__all__ = ["make_driver"]

pytestmark = [pytest.mark.postgres, pytest.mark.timing]

NEVER_POLL = 60.0
"""A poll interval longer than any wait here: only a notification can wake the waiter."""

WAIT = 20.0
"""How long a waiter waits for work.  Woken within half of it, it was woken by the
enqueue (a notification, or a poll where that is the point), not by the end of its wait:
a bound that holds on a loaded machine, where a fixed latency in milliseconds need not."""


def wake_latency(worker: PostgresDriver, producer: PostgresDriver, queue: str) -> float:
    """Seconds from an enqueue on ``producer`` until ``worker``'s idle wait returns."""
    woke: list[float] = []
    waiter = threading.Thread(
        target=lambda: (worker.wait_for_jobs([queue], WAIT), woke.append(time.monotonic()))
    )
    waiter.start()
    time.sleep(0.3)  # the waiter is idle now
    assert not woke, "the waiter returned before anything was enqueued"
    sent = time.monotonic()
    producer.enqueue([EnqueueRequest("t", queue=queue)])
    waiter.join(WAIT / 2)
    assert woke, "the waiter was not woken by the enqueue"
    return woke[0] - sent


def listener_pids(schema: str) -> set[int]:
    """Server processes LISTENing on the schema's channels (their last statement)."""
    tables = Tables(schema)
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE query = %s",
            (f'LISTEN "{tables.channel}"; LISTEN "{tables.finished_channel}"',),
        ).fetchall()
    return {row[0] for row in rows}


def test_an_idle_waiter_is_woken_by_an_enqueue_not_by_a_poll(make_driver: MakeDriver) -> None:
    schema = unique_schema()
    worker = make_driver(schema, poll_interval=NEVER_POLL)
    producer = make_driver(schema, migrate=False)
    assert worker.capabilities.notifications
    worker.wait_for_jobs(["mail"], 0.01)  # the listener starts with the first wait
    latencies = [wake_latency(worker, producer, "mail") for _ in range(3)]
    assert max(latencies) < WAIT / 2, f"wake-up latencies {latencies} s"


def test_a_waiter_sleeps_through_enqueues_into_other_queues(make_driver: MakeDriver) -> None:
    schema = unique_schema()
    worker = make_driver(schema, poll_interval=NEVER_POLL)
    producer = make_driver(schema, migrate=False)
    worker.wait_for_jobs(["mail"], 0.01)
    timer = threading.Timer(0.1, lambda: producer.enqueue([EnqueueRequest("t", queue="sms")]))
    started = time.monotonic()
    timer.start()
    worker.wait_for_jobs(["mail"], 0.6)
    timer.join()
    assert time.monotonic() - started >= 0.55


def test_the_listener_survives_a_terminated_connection(make_driver: MakeDriver) -> None:
    schema = unique_schema()
    worker = make_driver(schema, poll_interval=NEVER_POLL)
    producer = make_driver(schema, migrate=False)
    worker.wait_for_jobs(["mail"], 0.01)
    (old,) = listener_pids(schema)
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (old,))
    deadline = time.monotonic() + EVENTUALLY
    while listener_pids(schema) in (set(), {old}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener_pids(schema) - {old}, "the listener did not reconnect"
    assert wake_latency(worker, producer, "mail") < WAIT / 2


def test_a_job_finished_through_another_driver_wakes_its_waiter(make_driver: MakeDriver) -> None:
    schema = unique_schema()
    waiter_side = make_driver(schema, poll_interval=NEVER_POLL)
    worker = make_driver(schema, migrate=False)
    (enqueued,) = worker.enqueue([EnqueueRequest("t")])
    job = enqueued.job
    (leased,) = worker.lease(["default"], 1, 30.0, "w")
    waiter = threading.Thread(target=waiter_side.wait_for_finished, args=([job.id], WAIT))
    waiter.start()
    time.sleep(0.2)  # the waiter's listener connects and LISTENs
    assert waiter.is_alive()
    assert worker.complete([Completion(job.id, leased.lease_token or "", None)]) == []
    waiter.join(WAIT / 2)
    assert not waiter.is_alive(), "the waiter slept through the notice of another connection"


def test_without_notifications_an_idle_waiter_polls(make_driver: MakeDriver) -> None:
    schema = unique_schema()
    worker = make_driver(schema, notifications=False, poll_interval=0.05)
    producer = make_driver(schema, migrate=False, notifications=False)
    assert not worker.capabilities.notifications
    started = time.monotonic()
    worker.wait_for_jobs(["mail"], 0.3)
    assert time.monotonic() - started >= 0.29  # nothing to do: waits the whole timeout
    assert wake_latency(worker, producer, "mail") < WAIT / 2  # found by its poll
    assert listener_pids(schema) == set()


LISTENER_SETTLE = 5.0
"""How long a listener may take to connect when it starts."""


def started_listener(schema: str) -> Listener:
    """A listener on the schema's channel, connected."""
    skip_without_postgres()
    listener = Listener(POSTGRES_URL, Tables(schema).channel, Tables(schema).finished_channel)
    listener.start(settle=LISTENER_SETTLE)
    assert listener.connected
    return listener


def voluntary_switches(thread: threading.Thread) -> int:
    """How often ``thread`` has gone to sleep (Linux)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    (line,) = (line for line in status.splitlines() if line.startswith("voluntary_ctxt_switches"))
    return int(line.split()[1])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_an_idle_listener_thread_sleeps_until_something_arrives() -> None:
    schema = unique_schema()
    listener = started_listener(schema)
    try:
        (thread,) = (t for t in threading.enumerate() if t.name.endswith(schema))
        time.sleep(0.1)  # past the LISTEN and the first look at the socket
        before = voluntary_switches(thread)
        time.sleep(0.5)
        assert voluntary_switches(thread) - before <= 1, "the idle listener thread woke up"
    finally:
        listener.close()


def test_closing_a_listener_is_prompt_and_can_be_repeated() -> None:
    took = []
    for _ in range(3):
        listener = started_listener(unique_schema())
        time.sleep(0.05)
        started = time.monotonic()
        listener.close()
        took.append(time.monotonic() - started)
        listener.close()
        assert not listener.connected
    # The listener thread sleeps in a select without timeout: closing wakes it, or
    # would wait for ever; no connection needs the settle time given to start.
    assert max(took) < LISTENER_SETTLE, f"closing took {max(took):.3f} s"
