"""A 400-member partial chord on Redis beside a 400-member plain chord, one run.

Run: ``make bench``, or ``.venv/bin/python tests/bench/bench_redis_chords.py [--scale F]``.
Redis runs on a redis-server of the script's own (skipped without ``redis-server``).

Each round enqueues one chord of ``MEMBERS`` members and a callback through the
driver, leases the members, ends them one call per member (as that many workers
would), in a shuffled order, then leases and completes the callback.  The kinds
take turns round by round: the baseline, a plain chord whose members all succeed;
a partial chord whose members all succeed; a partial chord whose every third
member dies.  Figures are the median per kind of the whole chord (seconds), and of
the one call that ends the last member and releases the callback (milliseconds),
as ratios to the baseline's.  It is a measurement, not a test: it checks only that
the callback was released once with what it should get.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import statistics
import time
import uuid
from dataclasses import dataclass, field

from redis_server import private_server
from rich.console import Console
from rich.table import Table

from taskharbor.spec import (
    Completion,
    EnqueueRequest,
    ErrorReport,
    Failure,
    JobState,
    StepSpec,
    WorkflowGraph,
)

MEMBERS = 400
ROUNDS = 9
KINDS = ("plain", "partial", "partial, a third dead")
TARGET = 1.5
"""A partial chord may cost at most this many times a plain one (whole chord)."""


@dataclass
class Timings:
    whole: list[float] = field(default_factory=list)
    release: list[float] = field(default_factory=list)


def graph(partial: bool) -> WorkflowGraph:
    members = tuple(StepSpec(EnqueueRequest("bench.member", args=(n,))) for n in range(MEMBERS))
    callback = StepSpec(
        EnqueueRequest("bench.callback"),
        after=tuple(range(MEMBERS)),
        input=list(range(MEMBERS)),
        partial=partial,
    )
    return WorkflowGraph(steps=(*members, callback), result=MEMBERS)


def one_chord(url: str, kind: str, rng: random.Random, timings: Timings) -> None:
    from taskharbor.drivers.redis import RedisDriver

    driver = RedisDriver(url, prefix=f"bench_{uuid.uuid4().hex[:8]}")
    try:
        driver.migrate()
        start = time.perf_counter()
        workflow = driver.enqueue_workflow(graph(kind != "plain"))
        members = driver.lease(["default"], MEMBERS, 300.0, "bench")
        rng.shuffle(members)
        dies = {job.id for job in members if kind == KINDS[2] and job.args[0] % 3 == 0}
        error = ErrorReport("RuntimeError", "boom")
        last = 0.0
        for job in members:
            token = str(job.lease_token)
            began = time.perf_counter()
            if job.id in dies:
                assert driver.fail([Failure(job.id, token, error, permanent=True)]) == []
            else:
                assert driver.complete([Completion(job.id, token, job.args[0])]) == []
            last = time.perf_counter() - began
        (callback,) = driver.lease(["default"], MEMBERS, 300.0, "bench")
        assert driver.complete([Completion(callback.id, str(callback.lease_token), 0)]) == []
        timings.whole.append(time.perf_counter() - start)
        timings.release.append(last)
        assert callback.id == workflow.steps[-1]
        survivors = [n for n in range(MEMBERS) if not (kind == KINDS[2] and n % 3 == 0)]
        if kind == "plain":
            assert list(callback.args) == [survivors]
        else:
            results, failures = callback.args
            assert results == survivors and len(failures) == MEMBERS - len(survivors)
        assert driver.get([callback.id])[0].state is JobState.SUCCEEDED
    finally:
        driver.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    rounds = max(3, int(ROUNDS * parser.parse_args().scale))
    console = Console()
    logging.getLogger("taskharbor").setLevel(logging.ERROR)  # the private server's warning
    if shutil.which("redis-server") is None:
        console.print("no redis-server on this machine: the Redis chord benchmark is skipped")
        return
    timings = {kind: Timings() for kind in KINDS}
    rng = random.Random("chords")
    with private_server() as url:
        for _ in range(rounds):
            for kind in KINDS:
                one_chord(url, kind, rng, timings[kind])
    base = timings["plain"]
    base_whole, base_release = statistics.median(base.whole), statistics.median(base.release)
    table = Table(title=f"A chord of {MEMBERS} members on Redis, median of {rounds} rounds")
    for column in ("chord", "whole (s)", "ratio", "releasing call (ms)", "ratio"):
        table.add_column(column, justify="left" if column == "chord" else "right")
    for kind in KINDS:
        whole = statistics.median(timings[kind].whole)
        release = statistics.median(timings[kind].release)
        table.add_row(
            kind,
            f"{whole:.3f}",
            f"{whole / base_whole:.2f}",
            f"{release * 1000:.2f}",
            f"{release / base_release:.2f}",
        )
    console.print(table)
    worst = max(statistics.median(timings[kind].whole) for kind in KINDS[1:]) / base_whole
    console.print(f"partial chord / plain chord, whole: {worst:.2f} (target <= {TARGET})")


if __name__ == "__main__":
    main()
