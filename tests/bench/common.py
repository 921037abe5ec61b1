"""What every harness of the benchmark shares: sizes, timing, fresh databases, percentiles."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

POSTGRES_URL = os.environ.get("TASKHARBOR_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
BULK_BATCH = 1_000
"""Jobs per call for bulk enqueue, for every system that has one."""
LATENCY_GAP = 0.02
"""Seconds between two latency probes: the worker is idle (waiting) when each arrives."""


@dataclass
class Figures:
    """One system's measurements; ``None`` where the system was not measured that way."""

    processing: float | None = None
    enqueue_single: float | None = None
    enqueue_bulk: float | None = None
    latency_ms: list[float] = field(default_factory=list)

    def p50(self) -> float | None:
        return statistics.median(self.latency_ms) if self.latency_ms else None

    def p99(self) -> float | None:
        if not self.latency_ms:
            return None
        ordered = sorted(self.latency_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def as_json(self) -> dict[str, float | int | None]:
        return {
            "processing_jobs_s": self.processing,
            "enqueue_single_jobs_s": self.enqueue_single,
            "enqueue_bulk_jobs_s": self.enqueue_bulk,
            "latency_p50_ms": self.p50(),
            "latency_p99_ms": self.p99(),
            "latency_samples": len(self.latency_ms),
        }


class Stopwatch:
    """Jobs per second over a ``with`` block."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.rate = 0.0

    def __enter__(self) -> Stopwatch:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.rate = self.jobs / (time.perf_counter() - self._started)


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database of the same server."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}" + (f"?{query}" if query else "")


@contextmanager
def scratch_database(url: str, purpose: str) -> Iterator[str]:
    """A new, empty database for one peer (its tables live where it wants them); dropped after."""
    name = f"th_bench_{purpose}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(url, name)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


@contextmanager
def scratch_schema(url: str) -> Iterator[str]:
    """A fresh schema name for TaskHarbor's tables; dropped after."""
    name = f"th_bench_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
            conn.execute(drop)
