"""Storage URLs: schemes, the PostgreSQL schema parameter, and no implicit migration."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskharbor.spec import InvalidRequest, SchemaError
from taskharbor.urls import open_driver, split_schema


def test_schema_parameter_is_taken_out_of_the_url() -> None:
    url = "postgresql://root@127.0.0.1:5432/test?sslmode=disable&schema=jobs_a"
    assert split_schema(url) == ("postgresql://root@127.0.0.1:5432/test?sslmode=disable", "jobs_a")
    assert split_schema("postgresql://h/db") == ("postgresql://h/db", None)


@pytest.mark.parametrize("query", ["schema=", "schema=a&schema=b"])
def test_bad_schema_parameter_is_refused(query: str) -> None:
    with pytest.raises(InvalidRequest, match="schema"):
        split_schema(f"postgresql://h/db?{query}")


def test_a_url_opens_a_store_without_creating_its_schema(tmp_path: Path) -> None:
    driver = open_driver(f"sqlite:///{tmp_path}/fresh.db")
    try:
        with pytest.raises(SchemaError, match="taskharbor migrate"):
            driver.count()
        driver.migrate()
        assert driver.count() == {}
    finally:
        driver.close()


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(InvalidRequest, match="memory://"):
        open_driver("redis://localhost")
