"""The app of the workflow crash test, and the process that starts its workers.

The test process imports this module to enqueue workflows.  Worker processes
come from this module run as a script, a *spawner*::

    python workflow_crash_app.py LEDGER sqlite PATH
    python workflow_crash_app.py LEDGER postgres CONNINFO SCHEMA

Starting Python and importing TaskHarbor takes about a second on a busy
machine, longer than the test's gap between two kills.  So the spawner imports
everything once, prints ``ready``, and then forks one worker process for each
``spawn`` line it reads on stdin, answering with the new process's id.  Each
forked process opens the store itself (the spawner holds no connection, no
thread and no file of the store) and runs a real :class:`th.Worker` until it
is killed; its stdout and stderr go to a log file of its own.

Every handler appends two lines to the ledger (a file the test owns): one when
it starts and one, with its result, just before it returns.  Each line is one
``write`` to a file opened in append mode, so lines from concurrent processes
never interleave, and a process killed mid-handler leaves its ``start`` line
without an ``end``.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import taskharbor as th

MAX_ATTEMPTS = 100
"""Far more attempts than kills: a step is never sent to the dead-letter queue by them."""

HANDLER_SECONDS = (0.05, 0.25)
"""How long a handler sleeps before its result: long enough for kills to land mid-handler."""

MODULUS = 1_000_003
"""Results stay small: every arithmetic result is taken modulo this prime."""


# -- what the steps compute -----------------------------------------------------------------


def fold(value: Any) -> int:
    """An int, or a nested list of ints folded into one, weighing each item by its position.

    The weights make the value depend on the order of a list, so a chord
    callback given its members' results out of order computes a wrong result.
    """
    if isinstance(value, int):
        return value
    return sum((index + 1) * fold(item) for index, item in enumerate(value)) % MODULUS


def start(n: int) -> int:
    return n


def add(value: Any, k: int) -> int:
    return (fold(value) + k) % MODULUS


def mul(value: Any, k: int) -> int:
    return (fold(value) * k) % MODULUS


def total(values: list[Any]) -> int:
    return fold(values)


def broken(value: Any, k: int) -> int:
    """A step that always fails for good: it sends the workflow to ``failed``."""
    raise th.PermanentError(f"step {k} is broken (input {fold(value)})")


def alert(failure: th.StepFailure, tag: str) -> int:
    """The failure callback: its result is the id of the dead step it was told about."""
    return failure["job_id"]


STEPS: dict[str, Callable[..., int]] = {
    "crash.start": start,
    "crash.add": add,
    "crash.mul": mul,
    "crash.total": total,
    "crash.broken": broken,
    "crash.alert": alert,
}
"""What each task computes, by task name, as plain functions (the test's oracle uses them)."""


# -- the app --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """Where the jobs live, as the command-line arguments of a worker process."""

    kind: str
    location: str
    schema: str | None = None
    """The PostgreSQL schema, or the Redis key prefix."""

    def argv(self) -> list[str]:
        return [self.kind, self.location] + ([] if self.schema is None else [self.schema])

    @classmethod
    def from_argv(cls, argv: list[str]) -> Store:
        if len(argv) == 2 and argv[0] == "sqlite":
            return cls("sqlite", argv[1])
        if len(argv) == 3 and argv[0] in ("postgres", "redis"):
            return cls(argv[0], argv[1], argv[2])
        raise SystemExit(
            f"usage: sqlite PATH | postgres CONNINFO SCHEMA | redis URL PREFIX, not {argv}"
        )

    def open_app(self) -> th.App:
        if self.kind == "sqlite":
            return th.App(f"sqlite:///{self.location}")
        if self.kind == "redis" and self.schema is not None:
            from taskharbor.drivers.redis import RedisDriver

            return th.App(driver=RedisDriver(self.location, prefix=self.schema))
        from taskharbor.drivers.postgres import PostgresDriver

        if self.schema is None:
            raise ValueError("a PostgreSQL store needs a schema")
        return th.App(driver=PostgresDriver(self.location, schema=self.schema))


@dataclass(frozen=True)
class CrashApp:
    """The app and its tasks (one per entry of :data:`STEPS`)."""

    app: th.App
    start: th.Task[Any]
    add: th.Task[Any]
    mul: th.Task[Any]
    total: th.Task[Any]
    broken: th.Task[Any]
    alert: th.Task[Any]


def write_ledger(ledger: Path, line: dict[str, Any]) -> None:
    data = (json.dumps(line) + "\n").encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def make_app(store: Store, ledger: Path) -> CrashApp:
    """The app on ``store``; its handlers log to ``ledger`` and sleep a little."""
    app = store.open_app()

    def register(name: str) -> th.Task[Any]:
        compute = STEPS[name]

        def handler(*args: Any) -> int:
            job = th.current_job()
            entry = {"pid": os.getpid(), "job": job.id, "attempt": job.attempt}
            write_ledger(ledger, {**entry, "event": "start"})
            time.sleep(random.uniform(*HANDLER_SECONDS))
            result: int = compute(*args)
            write_ledger(ledger, {**entry, "event": "end", "result": result})
            return result

        return app.task(name=name, max_attempts=MAX_ATTEMPTS)(handler)

    return CrashApp(
        app,
        start=register("crash.start"),
        add=register("crash.add"),
        mul=register("crash.mul"),
        total=register("crash.total"),
        broken=register("crash.broken"),
        alert=register("crash.alert"),
    )


# -- the worker process ----------------------------------------------------------------------

WORKER_OPTIONS: dict[str, Any] = {
    "concurrency": 2,
    "lease": 1.0,
    "heartbeat_interval": 0.1,
    "poll_interval": 0.05,
    "maintenance_interval": 0.1,
}
"""A short lease, so that a killed worker's jobs are rescued within about a second."""


PR_SET_PDEATHSIG = 1
"""Linux ``prctl`` option: the signal a process gets when its parent dies."""


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the spawner ends, so that no worker outlives the test.

    (The spawner ends when the test closes its stdin, or dies with the test.)
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the spawner died before prctl took effect
        os._exit(1)


def run_worker(store: Store, ledger: Path, log: Path, spawner: int) -> NoReturn:
    """The body of a forked worker process: it works until it is killed."""
    try:
        die_with_parent(spawner)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(0)
        random.seed()  # not the spawner's sequence: each worker sleeps its own times
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        th.Worker(make_app(store, ledger).app, **WORKER_OPTIONS).run()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(1)  # a worker only ends when it is killed: anything else is a failure


def main(argv: list[str]) -> None:
    ledger, store = Path(argv[0]), Store.from_argv(argv[1:])
    importlib.import_module(f"taskharbor.drivers.{store.kind}")  # once, before any fork
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps killed workers
    print("ready", flush=True)
    for number, line in enumerate(sys.stdin, start=1):
        if line.strip() != "spawn":
            raise SystemExit(f"unknown command {line!r} (expected 'spawn')")
        spawner = os.getpid()
        pid = os.fork()
        if pid == 0:
            run_worker(store, ledger, ledger.with_name(f"worker-{number}.log"), spawner)
        print(pid, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
