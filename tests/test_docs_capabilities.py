"""docs/drivers.md's table of which built-in store declares what cannot rot.

Each ``yes`` or ``no`` cell of the table is the capability as the store declares
it (other cells explain a capability that depends on the store's settings, and
are not checked).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from driver_registry import DriverFactory
from taskharbor.spec import Capabilities, FakeClock

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "drivers.md"
MARK = "<!-- capability table -->"
COLUMNS = {"memory": "memory", "SQLite": "sqlite", "PostgreSQL": "postgres", "Redis": "redis"}


def capability_table() -> dict[str, dict[str, str]]:
    """The table's cells by driver name, then by capability."""
    lines = GUIDE.read_text().split(MARK, 1)[1].strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    drivers = [COLUMNS[name] for name in header[1:]]
    table: dict[str, dict[str, str]] = {name: {} for name in drivers}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        capability = cells[0].strip("`")
        for name, cell in zip(drivers, cells[1:], strict=True):
            table[name][capability] = cell
    return table


def test_the_table_names_every_capability_and_store() -> None:
    fields = [field.name for field in dataclasses.fields(Capabilities)]
    table = capability_table()
    assert sorted(table) == sorted(COLUMNS.values())
    for cells in table.values():
        assert list(cells) == fields


def test_each_store_declares_what_the_table_says(
    driver_name: str, driver_factory: DriverFactory
) -> None:
    table = capability_table()
    if driver_name not in table:
        pytest.skip("the reference model is not a store")
    driver = driver_factory(FakeClock())
    declared = dataclasses.asdict(driver.capabilities)
    driver.close()
    for capability, cell in table[driver_name].items():
        if cell in ("yes", "no"):
            assert declared[capability] is (cell == "yes"), (driver_name, capability, cell)
