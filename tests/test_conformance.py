"""The conformance suite against every driver of tests/driver_registry.py.

``driver_factory`` comes from tests/conftest.py, parametrised by ``--drivers``;
the stores that can be damaged or made to fail give the suite their hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from driver_registry import (
    CALLER_TRANSACTION,
    FAIL_NEXT_CALL,
    PLANT_CORRUPT_JOB,
    SHARED_STORES,
)
from taskharbor.conformance import ConformanceSuite
from taskharbor.spec import Driver


class TestConformance(ConformanceSuite):
    """Every rule of the contract, for each selected driver."""

    @pytest.fixture
    def plant_corrupt_job(self, driver_name: str) -> Callable[[Driver, int], None] | None:
        return PLANT_CORRUPT_JOB.get(driver_name)

    @pytest.fixture
    def fail_next_call(self, driver_name: str) -> Callable[[Driver], None] | None:
        return FAIL_NEXT_CALL.get(driver_name)

    @pytest.fixture
    def open_shared_store(
        self, driver_name: str, tmp_path: Path
    ) -> Iterator[Callable[[], Driver] | None]:
        if driver_name not in SHARED_STORES:
            yield None
            return
        with SHARED_STORES[driver_name](tmp_path) as opener:
            yield opener

    @pytest.fixture
    def caller_transaction(
        self, driver_name: str
    ) -> Callable[[Driver], AbstractContextManager[object]] | None:
        return CALLER_TRANSACTION.get(driver_name)
