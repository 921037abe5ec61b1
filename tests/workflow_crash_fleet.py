"""Worker processes that the workflow crash test kills at random and replaces at once.

The workers are forked by a spawner process (see :mod:`workflow_crash_app`),
so a replacement is working within milliseconds of a kill.  They are not our
children: the spawner's kernel reaps them, and a worker is gone once signal 0
no longer reaches its process id.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from workflow_crash_app import Store

APP_SCRIPT = Path(__file__).with_name("workflow_crash_app.py")
ANSWER_TIMEOUT = 30.0
"""Seconds the spawner may take to start (a loaded machine is slow) or to fork."""


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Fleet:
    """``size`` worker processes on ``store``, each logging to ``<logs>/worker-<n>.log``."""

    store: Store
    ledger: Path
    size: int = 3
    working: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    _spawner: subprocess.Popen[str] | None = None
    _ledger_read: int = 0
    _open_handlers: set[tuple[int, int, int]] = field(default_factory=set)

    def __enter__(self) -> Fleet:
        self._spawner = subprocess.Popen(
            [sys.executable, str(APP_SCRIPT), str(self.ledger), *self.store.argv()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._answer() != "ready":
            raise AssertionError("the spawner did not start")
        for _ in range(self.size):
            self._start_one()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for pid in self.working:
            self._stop(pid)
        self.working.clear()
        if self._spawner is not None:
            assert self._spawner.stdin is not None and self._spawner.stdout is not None
            self._spawner.stdin.close()
            self._spawner.wait(timeout=30)
            self._spawner.stdout.close()

    def _answer(self) -> str:
        """The spawner's next line ("" if it said nothing in time or died)."""
        assert self._spawner is not None and self._spawner.stdout is not None
        readable, _, _ = select.select([self._spawner.stdout], [], [], ANSWER_TIMEOUT)
        return self._spawner.stdout.readline().strip() if readable else ""

    def _start_one(self) -> None:
        assert self._spawner is not None and self._spawner.stdin is not None
        self._spawner.stdin.write("spawn\n")
        self._spawner.stdin.flush()
        answer = self._answer()
        if not answer.isdigit():
            raise AssertionError(f"the spawner did not fork a worker (it said {answer!r})")
        self.working.append(int(answer))

    def _stop(self, pid: int) -> None:
        """SIGKILL a worker and wait until it is gone."""
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while is_running(pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {pid} survived SIGKILL")
            time.sleep(0.001)

    def kill(self, pid: int) -> None:
        """SIGKILL a working process and start a replacement."""
        self.working.remove(pid)
        self._stop(pid)
        self.killed.append(pid)
        self._start_one()

    def busy(self) -> list[int]:
        """The working processes running a handler now, as far as the ledger tells."""
        if self.ledger.exists():
            with self.ledger.open("rb") as ledger:
                ledger.seek(self._ledger_read)
                text = ledger.read()
            complete = text[: text.rfind(b"\n") + 1]  # a line being written is read next time
            self._ledger_read += len(complete)
            for line in complete.decode().splitlines():
                entry = json.loads(line)
                run = (entry["pid"], entry["job"], entry["attempt"])
                if entry["event"] == "start":
                    self._open_handlers.add(run)
                else:
                    self._open_handlers.discard(run)
        running = {pid for pid, _, _ in self._open_handlers}
        return [pid for pid in self.working if pid in running]

    def check_working(self) -> None:
        """Fail if a worker ended without being killed (its log says why)."""
        for pid in self.working:
            if not is_running(pid):
                raise AssertionError(f"worker {pid} exited by itself; see {self.logs()}")

    def logs(self) -> str:
        return f"the worker-*.log files next to {self.ledger}"


POLL_SECONDS = 0.02
"""How often the controller looks at the workflow's progress."""


def kill_until(
    fleet: Fleet,
    progress: Callable[[], int | None],
    plan: list[int],
    rng: random.Random,
    every: tuple[float, float],
    timeout: float,
) -> None:
    """Kill random workers until the workflow is no longer running.

    The victim is a random worker among those running a handler, if any, so
    that most kills land mid-handler; else a random worker.

    ``progress()`` is how many steps have succeeded, ``None`` once the workflow
    is no longer running.  A worker is killed after each random pause in
    ``every``, and also whenever fewer kills were made than ``plan`` asks for:
    the ``n``-th kill is due once ``plan[n]`` steps have succeeded.  A plan
    whose entries are below the workflow's step count makes all its kills
    happen before the workflow can finish, however fast it runs.
    """
    planned = sorted(plan)
    deadline = time.monotonic() + timeout
    next_kill = time.monotonic() + rng.uniform(*every)
    while True:
        time.sleep(POLL_SECONDS)
        fleet.check_working()
        succeeded = progress()
        if succeeded is None:
            return
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(
                f"not finished after {timeout} s and {len(fleet.killed)} kills; see {fleet.logs()}"
            )
        due = sum(1 for threshold in planned if threshold <= succeeded)
        if len(fleet.killed) < due or now >= next_kill:
            fleet.kill(rng.choice(fleet.busy() or fleet.working))
            next_kill = now + rng.uniform(*every)
