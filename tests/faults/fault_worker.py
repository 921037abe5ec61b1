"""A real ``th.Worker`` process for the fault scenarios, and the app its jobs run on.

Run as a script by :class:`fault_fleet.Fleet`::

    python fault_worker.py LEDGER OPTIONS_JSON sqlite PATH
    python fault_worker.py LEDGER OPTIONS_JSON postgres CONNINFO SCHEMA

``OPTIONS_JSON`` holds the ``th.Worker`` keyword arguments, and optionally
``tick_every`` (seconds): the app then declares the periodic schedule of
:func:`add_ticks` too.  The main task,
``fault.work(n, seconds, fail_below, slow_first)``, appends a ``start`` line to
the ledger (a file the test owns), sleeps ``seconds`` (``slow_first`` on its
first attempt), raises on attempts up to ``fail_below``, and appends an ``end``
line before returning ``[n, attempt]``, so the stored result says which
attempt won (``fault.keyed`` likewise, under flow limits).  Each ledger line is
one ``write`` in append mode (see
:func:`workflow_crash_app.write_ledger`), so the file's order is the order in
time, and a killed handler leaves a ``start`` without an ``end``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from workflow_crash_app import Store, die_with_parent, write_ledger

import taskharbor as th

TASK = "fault.work"
TICK_TASK = "fault.tick"
KEYED_TASK = "fault.keyed"
"""``fault.keyed(n, key, seconds)``: one job per key at a time, in enqueue order, and at
most :data:`KEYED_CAP` at all; its ledger lines carry the key."""
KEYED_CAP = 6


def add_ticks(app: th.App, ledger: Path, every: int) -> None:
    """A schedule of ``fault.tick`` every ``every`` seconds, every missed tick run.

    The handler appends ``start`` and ``end`` lines with its job id and tick to the
    ledger, so a test can tell a second attempt of a tick's job from a second job.
    """

    @app.periodic(every=every, name="fault-ticks", missed="all", catch_up=1000)
    @app.task(name=TICK_TASK, max_attempts=100, backoff=th.Backoff.constant(0.1))
    def tick() -> None:
        job = th.current_job()
        assert job.tick is not None
        line = {"pid": os.getpid(), "job": job.id, "attempt": job.attempt}
        line["tick"] = job.tick.isoformat()
        write_ledger(ledger, {**line, "event": "start", "t": time.monotonic()})
        time.sleep(0.05)
        write_ledger(ledger, {**line, "event": "end", "t": time.monotonic()})


def make_app(store: Store, ledger: Path) -> tuple[th.App, th.Task[Any]]:
    app = store.open_app()

    @app.task(name=TASK, max_attempts=100, backoff=th.Backoff.constant(0.1))
    def work(n: int, seconds: float, fail_below: int = 0, slow_first: float = 0.0) -> list[int]:
        job = th.current_job()
        line = {"pid": os.getpid(), "job": job.id, "attempt": job.attempt}
        write_ledger(ledger, {**line, "event": "start", "t": time.monotonic()})
        time.sleep(slow_first if job.attempt == 1 and slow_first else seconds)
        if job.attempt <= fail_below:
            write_ledger(ledger, {**line, "event": "error", "t": time.monotonic()})
            raise RuntimeError(f"planned failure of job {n} attempt {job.attempt}")
        write_ledger(ledger, {**line, "event": "end", "t": time.monotonic()})
        return [n, job.attempt]

    @app.task(
        name=KEYED_TASK,
        max_attempts=100,
        backoff=th.Backoff.constant(0.1),
        concurrency=1,
        concurrency_key="key",
        global_concurrency=KEYED_CAP,
        sequence=True,
    )
    def keyed(n: int, key: str, seconds: float) -> list[int]:
        job = th.current_job()
        line = {"pid": os.getpid(), "job": job.id, "attempt": job.attempt, "key": key}
        write_ledger(ledger, {**line, "event": "start", "t": time.monotonic()})
        time.sleep(seconds)
        write_ledger(ledger, {**line, "event": "end", "t": time.monotonic()})
        return [n, job.attempt]

    return app, work


def main(argv: list[str]) -> None:
    die_with_parent(os.getppid())  # no worker outlives the test that started it
    ledger, options = Path(argv[0]), json.loads(argv[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    every = options.pop("tick_every", None)
    app, _ = make_app(Store.from_argv(argv[2:]), ledger)
    if every is not None:
        add_ticks(app, ledger, every)
    th.Worker(app, **options).run()


if __name__ == "__main__":
    main(sys.argv[1:])
