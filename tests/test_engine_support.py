"""Helpers shared by the engine tests (no tests here): apps on the driver under
test, and workers that run in a background thread with short intervals."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from driver_registry import DriverFactory
from taskharbor import App, Job, Task, TaskCall, Worker
from taskharbor.spec import Clock, Driver, FakeClock, SystemClock

FAST = {"poll_interval": 0.01, "maintenance_interval": 0.01, "heartbeat_interval": 0.05}
"""Worker intervals short enough for tests to see effects within milliseconds."""


PRODUCER_PATHS = ("enqueue", "enqueue_async")
"""The ways a producer stores one job; every producer-side test runs through each."""


class Producer:
    """Stores one job through the producer path a test is parametrised with.

    A producer test calls ``produce(task_or_options, *args)`` instead of
    ``.enqueue(...)``, so the same assertions also hold for ``enqueue_async``
    (which runs on an event loop and a thread of its own, and so could drop
    options unseen).  A new producer path is one more name in
    :data:`PRODUCER_PATHS` and one more branch here.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return self.path

    def __call__(self, call: Task[Any] | TaskCall[Any], *args: Any, **kwargs: Any) -> Job:
        if self.path == "enqueue":
            return call.enqueue(*args, **kwargs)
        return asyncio.run(call.enqueue_async(*args, **kwargs))


def make_app(factory: DriverFactory, clock: Clock | None = None) -> App:
    return App(driver=factory(clock or SystemClock()))


@contextmanager
def app_declaring(factory: DriverFactory, capability: str) -> Iterator[App]:
    """An app on a migrated driver from ``factory``, which must declare ``capability``:
    the test is skipped, naming the driver and the capability, on one that does not."""
    driver = factory(SystemClock())
    if not getattr(driver.capabilities, capability):
        driver.close()
        pytest.skip(f"{type(driver).__name__} does not declare capability {capability}")
    driver.migrate()
    with App(driver=driver) as app:
        yield app


def fake_app(factory: DriverFactory) -> tuple[App, FakeClock]:
    clock = FakeClock()
    return App(driver=factory(clock)), clock


def burst(app: App, **options: Any) -> Worker:
    """Run a worker until nothing is ready; return it."""
    worker = Worker(app, **{**FAST, "lease": 30.0, **options})
    worker.run(burst=True, handle_signals=False)
    return worker


@contextmanager
def running_worker(app: App, **options: Any) -> Iterator[Worker]:
    """A worker running in a thread for the duration of the block, then stopped."""
    worker = Worker(app, **{**FAST, "lease": 30.0, **options})
    failure: list[BaseException] = []

    def target() -> None:
        try:
            worker.run(handle_signals=False)
        except BaseException as exc:  # reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=target, name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop"
        assert not failure, failure


EVENTUALLY = 60.0
"""How long a test waits for something that must happen (seconds of wall time).

Not a duration under test: a bound on a hang, so a test on a loaded machine
(``make test-stress``) passes and a test that waits in vain still ends."""


def eventually(
    check: Callable[[], bool], timeout: float = EVENTUALLY, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


def with_clock(inner: Driver, clock: Clock) -> Driver:
    """``inner`` seen through a driver whose ``clock`` is ``clock``: every call goes to
    ``inner`` (which keeps its own clock), as on PostgreSQL, where reading the store's
    time is a query of its own that can fail or stall while the other calls work."""
    calls = {
        name: _forward(name)
        for name, value in vars(Driver).items()
        if callable(value) and not name.startswith("_")
    }
    wrapper = type(f"{type(inner).__name__}WithClock", (Driver,), calls)()
    wrapper.capabilities = inner.capabilities
    wrapper.clock = clock
    wrapper.inner = inner  # type: ignore[attr-defined]
    return wrapper


def _forward(name: str) -> Callable[..., Any]:
    def call(self: Driver, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)  # type: ignore[attr-defined]

    call.__name__ = name
    return call


def import_error_without(library: str, module: str) -> str:
    """The ImportError ``import module`` raises in a fresh process where ``library`` is
    not installed (an integration's message, which names its extra)."""
    probe = (
        f"import sys; sys.modules[{library!r}] = None\n"
        "try:\n"
        f"    import {module}\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout
