"""Shared fixtures: every driver by name (see tests/driver_registry.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_engine_support import PRODUCER_PATHS, Producer

from driver_registry import DRIVERS, DriverFactory, drop_free_schemas


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--drivers",
        default=",".join(DRIVERS),
        help="comma-separated driver names to run the per-driver suites against",
    )


def pytest_report_header(config: pytest.Config) -> str:
    """Say which model-test profile runs, and which one proves a driver."""
    from taskharbor.model_tests import PROFILE_ENV
    from taskharbor.model_tests.profiles import PROOF_PROFILE, chosen_profile, profile_name

    name = profile_name()
    profile = chosen_profile(name)
    verdict = (
        "the profile that proves a driver"
        if name == PROOF_PROFILE
        else f"a quick look only: a driver is proven by {PROFILE_ENV}={PROOF_PROFILE}"
    )
    return (
        f"model tests: profile {name} ({profile.max_examples} sequences of up to "
        f"{profile.steps} steps, {profile.slow_examples} against a store doing I/O), {verdict}"
    )


def selected_drivers(config: pytest.Config) -> list[str]:
    names = [name.strip() for name in str(config.getoption("--drivers")).split(",") if name]
    unknown = sorted(set(names) - set(DRIVERS))
    if unknown:
        raise pytest.UsageError(f"unknown driver(s) {unknown}; known: {sorted(DRIVERS)}")
    return names


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The conformance groups that run on wall time (waiters that must be woken or time out, fleets
    of processes, a worker killed mid-batch) are timing tests: make test-stress runs
    them too.  Marked here, not in the shipped suite."""
    from taskharbor.conformance import FinishedWaitingRules, ProcessRules, WaitingRules

    waiting = {
        name
        for rules in (WaitingRules, FinishedWaitingRules, ProcessRules)
        for name in vars(rules)
        if name.startswith("test_")
    }
    for item in items:
        test = item if isinstance(item, pytest.Function) else None
        if test is not None and test.originalname in waiting and test.cls is not None:
            test.add_marker(pytest.mark.timing)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "driver_name" in metafunc.fixturenames:
        metafunc.parametrize("driver_name", selected_drivers(metafunc.config))


@pytest.fixture(scope="session", autouse=True)
def _drop_reused_schemas() -> Iterator[None]:
    """The PostgreSQL stores reuse closed test schemas (emptied); drop them at the end."""
    yield
    drop_free_schemas()


@pytest.fixture
def driver_factory(driver_name: str, tmp_path: Path) -> Iterator[DriverFactory]:
    """A factory of fresh, empty stores of the driver under test."""
    with DRIVERS[driver_name](tmp_path) as factory:
        yield factory


@pytest.fixture(params=PRODUCER_PATHS)
def produce(request: pytest.FixtureRequest) -> Producer:
    """Enqueue one job through each producer path in turn (sync, then async)."""
    return Producer(str(request.param))
