"""Round trips of the PostgreSQL driver's calls, counted in libpq's protocol trace.

A call whose work is one statement (enqueue without idempotency keys, lease,
reads) must cost one round trip: no BEGIN and COMMIT around it.  The test
traces the messages of the driver's only pooled connection (libpq's
``PQtrace``) on a real server and counts the server's ``ReadyForQuery``
messages, one per round trip.  A batch with idempotency keys stays one
transaction: its insert may be undone when a key's holder vanishes.

The enqueue statements are prepared, once per connection (one more round trip
the first time); with ``prepared_statements=False`` nothing is prepared, for
poolers that cannot keep prepared statements.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg import pq
from test_postgres_support import MakeDriver, make_driver

from taskharbor.drivers.postgres import PostgresDriver
from taskharbor.spec import EnqueueRequest, FakeClock, JobFilter, KeyScope

__all__ = ["make_driver"]

pytestmark = pytest.mark.postgres


@dataclass
class Trace:
    """The protocol messages of one traced block, one line each (direction, length, type...)."""

    lines: list[str]

    def messages(self, sender: str, kind: str) -> list[str]:
        """The messages of type ``kind`` sent by ``sender`` (``F``: client, ``B``: server)."""
        return [
            line for line in self.lines if line.split("\t")[0] == sender and f"\t{kind}\t" in line
        ]

    @property
    def round_trips(self) -> int:
        return len(self.messages("B", "ReadyForQuery"))

    @property
    def transaction_commands(self) -> list[str]:
        """BEGIN, COMMIT and ROLLBACK sent, as simple queries or parsed statements."""
        sent = self.messages("F", "Query") + self.messages("F", "Parse")
        words = ("BEGIN", "COMMIT", "ROLLBACK")
        return [line for line in sent if any(f'"{word}' in line for word in words)]


@contextmanager
def traced(driver: PostgresDriver, folder: Path) -> Iterator[Trace]:
    """Trace what the driver's only pooled connection sends and receives while the block runs."""
    trace = Trace([])
    path = folder / "libpq.trace"
    with path.open("w") as sink:
        with driver._pool.connection() as conn:
            conn.pgconn.trace(sink.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield trace
        finally:
            with driver._pool.connection() as conn:
                conn.pgconn.untrace()
    trace.lines = path.read_text().splitlines()


@pytest.fixture
def driver(make_driver: MakeDriver) -> PostgresDriver:
    """A driver with one pooled connection, so that every call goes through the traced one."""
    driver = make_driver(pool_size=1, clock=FakeClock())
    driver.list_jobs(JobFilter(limit=1))  # the first call checks the schema: not traced
    return driver


def test_enqueueing_one_job_is_one_round_trip(driver: PostgresDriver, tmp_path: Path) -> None:
    driver.enqueue([EnqueueRequest("first")])  # prepares the statement
    with traced(driver, tmp_path) as trace:
        (result,) = driver.enqueue([EnqueueRequest("one")])
    assert result.created
    assert trace.transaction_commands == []
    assert trace.messages("F", "Parse") == []  # the prepared statement is reused
    assert trace.round_trips == 1


def test_enqueueing_a_batch_is_one_round_trip(driver: PostgresDriver, tmp_path: Path) -> None:
    driver.enqueue([EnqueueRequest("first"), EnqueueRequest("second")])
    with traced(driver, tmp_path) as trace:
        results = driver.enqueue([EnqueueRequest("many", args=(n,)) for n in range(1000)])
    assert [r.job.args for r in results] == [(n,) for n in range(1000)]
    assert trace.transaction_commands == []
    assert trace.round_trips == 1


def test_without_prepared_statements_each_enqueue_is_parsed_unnamed(
    make_driver: MakeDriver, tmp_path: Path
) -> None:
    driver = make_driver(pool_size=1, prepared_statements=False)
    driver.list_jobs(JobFilter(limit=1))
    for _ in range(6):  # more than psycopg's default threshold for preparing on its own
        driver.enqueue([EnqueueRequest("first")])
    with traced(driver, tmp_path) as trace:
        driver.enqueue([EnqueueRequest("one")])
    (parse,) = trace.messages("F", "Parse")
    assert '\tParse\t "" "' in parse  # the unnamed statement: nothing kept on the server
    assert trace.round_trips == 1


def test_leasing_and_reading_are_one_round_trip_each(
    driver: PostgresDriver, tmp_path: Path
) -> None:
    (result,) = driver.enqueue([EnqueueRequest("job")])
    with traced(driver, tmp_path) as trace:
        (leased,) = driver.lease(["default"], 10, 30.0, "w")
        (read,) = driver.get([leased.id])
        listed = driver.list_jobs(JobFilter())
    assert leased.id == read.id == result.job.id == listed[0].id
    assert trace.transaction_commands == []
    assert trace.round_trips == 3


def test_a_single_keyed_request_needs_no_transaction(
    driver: PostgresDriver, tmp_path: Path
) -> None:
    driver.enqueue([EnqueueRequest("keyed", idempotency_key="warm-up")])
    request = EnqueueRequest("keyed", idempotency_key="k")
    with traced(driver, tmp_path) as stored:
        (first,) = driver.enqueue([request])
    with traced(driver, tmp_path) as held:
        (again,) = driver.enqueue([request])
    assert first.created and not again.created
    assert again.job.id == first.job.id
    assert stored.transaction_commands == held.transaction_commands == []
    assert stored.round_trips == 1
    assert held.round_trips == 2  # the insert, then the read of the key's holder


def test_a_key_given_up_by_its_last_taker_is_taken_in_the_same_round_trip(
    driver: PostgresDriver, tmp_path: Path
) -> None:
    window = KeyScope.window(1)
    (old,) = driver.enqueue([EnqueueRequest("keyed", idempotency_key="k", key_scope=window)])
    assert isinstance(driver.clock, FakeClock)
    driver.clock.advance(1)
    with traced(driver, tmp_path) as trace:
        (new,) = driver.enqueue([EnqueueRequest("keyed", idempotency_key="k", key_scope=window)])
    assert new.created and new.job.id > old.job.id
    assert trace.transaction_commands == []
    assert trace.round_trips == 1  # the old job gave the key up before the insert, no retry


def test_a_batch_with_keys_stays_one_transaction(driver: PostgresDriver, tmp_path: Path) -> None:
    requests = [EnqueueRequest("keyed", idempotency_key="k"), EnqueueRequest("plain")]
    driver.enqueue(requests)
    with traced(driver, tmp_path) as trace:
        results = driver.enqueue(requests)
    assert [result.created for result in results] == [False, True]
    commands = [line.split('"')[1] for line in trace.transaction_commands]
    assert commands == ["BEGIN", "COMMIT"]
    assert trace.round_trips == 4  # BEGIN, the insert, the read of the key's holder, COMMIT
