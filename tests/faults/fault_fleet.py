"""Worker processes the fault scenarios start, kill and stop, and the stores they share."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from unprivileged import Python, ordinary_python
from workflow_crash_app import Store

from driver_registry import (
    POSTGRES_URL,
    REDIS_URL,
    drop_redis_prefix,
    skip_without_postgres,
    skip_without_redis,
)

FAST_WORKER: dict[str, Any] = {
    "concurrency": 2,
    "lease": 1.0,
    "heartbeat_interval": 0.1,
    "poll_interval": 0.05,
    "maintenance_interval": 0.1,
}
"""A short lease and quick loops: a killed worker's jobs are rescued within about a second."""


@contextmanager
def fresh_store(kind: str, tmp_path: Path) -> Iterator[Store]:
    """An empty, migrated store: a SQLite file, or a PostgreSQL schema or a Redis key
    prefix dropped afterwards."""
    if kind == "sqlite":
        yield Store("sqlite", str(tmp_path / "jobs.db"))
        return
    if kind == "redis":
        yield from _fresh_redis_store()
        return
    skip_without_postgres()
    import psycopg

    from taskharbor.drivers.postgres import PostgresDriver

    schema = f"th_fault_{uuid.uuid4().hex[:12]}"
    driver = PostgresDriver(POSTGRES_URL, schema=schema)
    driver.migrate()
    driver.close()
    try:
        yield Store("postgres", POSTGRES_URL, schema)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _fresh_redis_store() -> Iterator[Store]:
    skip_without_redis()
    from taskharbor.drivers.redis import RedisDriver

    prefix = f"th_fault_{uuid.uuid4().hex[:12]}"
    driver = RedisDriver(REDIS_URL, prefix=prefix)
    driver.migrate()
    driver.close()
    try:
        yield Store("redis", REDIS_URL, prefix)
    finally:
        drop_redis_prefix(prefix)


def read_ledger(ledger: Path) -> list[dict[str, Any]]:
    """Every complete line of the ledger, in the order they were written."""
    if not ledger.exists():
        return []
    text = ledger.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


@dataclass(frozen=True)
class Kill:
    monotonic: float
    """On the ledger's clock (``t``), to order the kill among the handlers' lines."""
    wall: datetime
    """On the store's clock, to measure the delay until the store rescued the job."""


@dataclass
class Fleet:
    """Worker processes on ``store``, each logging to ``<ledger dir>/worker-<n>.log``."""

    store: Store
    ledger: Path
    options: dict[str, Any] = field(default_factory=lambda: dict(FAST_WORKER))
    working: list[subprocess.Popen[bytes]] = field(default_factory=list)
    kills: dict[int, Kill] = field(default_factory=dict)
    """Process id -> when it was SIGKILLed."""
    python: Python = field(default_factory=ordinary_python)
    """How workers start (as another user, on a copy: see tests/unprivileged.py).  The
    worker script imports the tests' shared helpers (``workflow_crash_app``)."""
    log_paths: dict[int, Path] = field(default_factory=dict)
    _started: int = 0

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for process in self.working:
            process.kill()
            process.wait(timeout=30)
        self.working.clear()

    def start(self, count: int = 1, **overrides: Any) -> None:
        for _ in range(count):
            self._started += 1
            path = self.ledger.with_name(f"worker-{self._started}.log")
            log = path.open("wb")
            options = json.dumps({**self.options, **overrides})
            script = self.python.tests / "faults" / "fault_worker.py"
            argv = [str(script), str(self.ledger), options, *self.store.argv()]
            process = subprocess.Popen(
                [*self.python.command, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.python.env,
                cwd=self.python.cwd,
            )
            log.close()
            self.working.append(process)
            self.log_paths[process.pid] = path

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL one worker (recording when) and wait until it is gone."""
        process.send_signal(signal.SIGKILL)
        self.kills[process.pid] = Kill(time.monotonic(), datetime.now(UTC))
        process.wait(timeout=30)
        self.working.remove(process)

    def has_started(self, process: subprocess.Popen[bytes]) -> bool:
        return " started on queues " in self.log_paths[process.pid].read_text()

    def wait_for_started(self, timeout: float = 60.0) -> list[subprocess.Popen[bytes]]:
        """The working processes whose worker has started, once there is at least one."""
        deadline = time.monotonic() + timeout
        while not (started := [p for p in self.working if self.has_started(p)]):
            self.check_alive()
            assert time.monotonic() < deadline, "no worker started"
            time.sleep(0.05)
        return started

    def wait_started(self, timeout: float = 60.0) -> None:
        """Wait until every working process has logged that its worker started."""
        deadline = time.monotonic() + timeout
        for process in self.working:
            while not self.has_started(process):
                self.check_alive()
                assert time.monotonic() < deadline, f"worker {process.pid} did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM every worker: each drains and exits 0, or the test fails."""
        self.wait_started()
        for process in self.working:
            process.send_signal(signal.SIGTERM)
        for process in self.working:
            code = process.wait(timeout=60)
            assert code == 0, f"worker {process.pid} exited with {code}; see {self.logs()}"
        self.working.clear()

    def kill_at_random(self, rng: random.Random, kills: int, every: tuple[float, float]) -> None:
        """SIGKILL a started worker ``kills`` times, ``every`` seconds apart (uniform; the
        moment in the worker's loop is not aimed), starting a replacement after each."""
        for _ in range(kills):
            time.sleep(rng.uniform(*every))
            self.check_alive()
            self.kill(rng.choice(self.wait_for_started()))
            self.start()

    def wait_until(
        self, condition: Callable[[], bool], what: str, *, deadline: float, poll: float = 0.05
    ) -> None:
        """Poll ``condition`` until it holds; fail, saying ``what`` did not happen, when a
        worker exits by itself or at ``deadline`` (on the monotonic clock)."""
        while not condition():
            assert time.monotonic() < deadline, f"{what} did not happen; see {self.logs()}"
            self.check_alive()
            time.sleep(poll)

    def check_alive(self) -> None:
        for process in self.working:
            if process.poll() is not None:
                raise AssertionError(f"worker {process.pid} exited by itself; see {self.logs()}")

    def logs(self) -> str:
        return f"the worker-*.log files in {self.ledger.parent}"

    def log_text(self) -> str:
        return "".join(path.read_text() for path in sorted(self.ledger.parent.glob("worker-*.log")))
