"""Every SQLite migration upgrades a file of the version before it, keeping its jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from migration_support import SQLITE_UNDO, sqlite_before

from taskharbor.drivers.sqlite.schema import SCHEMA_VERSION
from taskharbor.spec import SchemaError


def test_every_migration_has_its_undo_for_the_upgrade_tests() -> None:
    assert sorted(SQLITE_UNDO) == list(range(2, SCHEMA_VERSION + 1))


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_file_of_an_older_version_is_refused_then_upgraded(tmp_path: Path, version: int) -> None:
    old, kept = sqlite_before(tmp_path / "old.db", version)
    try:
        with pytest.raises(SchemaError, match="older than"):
            old.get([kept.id])
        old.migrate()
        assert old.get([kept.id])[0].task == "kept"
    finally:
        old.close()
