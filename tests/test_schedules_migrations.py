"""The schedules table arrives by migration: a store made before it keeps its jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from migration_support import postgres_before, sqlite_before

from taskharbor.spec import Driver, EnqueueRequest, SchemaError
from taskharbor.spec.schedules import Schedule


def declare(driver: Driver) -> None:
    schedule = Schedule("tick", EnqueueRequest("beat"), every=60)
    assert [r.name for r in driver.sync_schedules([schedule])] == ["tick"]


def test_a_sqlite_file_of_version_1_is_upgraded_with_its_jobs(tmp_path: Path) -> None:
    old, kept = sqlite_before(tmp_path / "old.db", 1)
    with pytest.raises(SchemaError, match="older than"):
        old.list_schedules()
    old.migrate()
    assert old.get([kept.id])[0].task == "kept"
    declare(old)
    old.close()


@pytest.mark.postgres
def test_a_postgres_schema_of_version_1_is_upgraded_with_its_jobs() -> None:
    with postgres_before("th_schedules_migration", "schedules", 2) as (old, kept):
        with pytest.raises(SchemaError, match=r"missing migrations \[2\]"):
            old.list_schedules()
        old.migrate()
        assert old.get([kept.id])[0].task == "kept"
        declare(old)
