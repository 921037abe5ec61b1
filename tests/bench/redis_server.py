"""A redis-server of a benchmark's own: a free port, a temporary folder, no persistence,
so nothing else shares it and nothing of it stays."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis


@contextmanager
def private_server() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="taskharbor-bench-redis-") as folder:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(port), "--bind", "127.0.0.1", "--dir", folder),
                *("--save", "", "--appendonly", "no", "--logfile", f"{folder}/redis.log"),
            ]
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        try:
            yield url
        finally:
            client.close()
            server.terminate()
            server.wait(30)
