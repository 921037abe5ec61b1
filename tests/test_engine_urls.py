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
        open_driver("mongodb://localhost")


def test_redis_prefix_parameter_is_taken_out_of_the_url() -> None:
    from taskharbor.drivers.redis.connect import split_prefix

    url = "rediss://:secret@cache.example:6380/2?ssl_cert_reqs=none&prefix=jobs_a"
    assert split_prefix(url) == (
        "rediss://:secret@cache.example:6380/2?ssl_cert_reqs=none",
        "jobs_a",
    )
    assert split_prefix("redis://h/0") == ("redis://h/0", "taskharbor")


@pytest.mark.parametrize(
    "url", ["redis://h/0?prefix=", "redis://h/0?prefix=a&prefix=b", "redis:///0"]
)
def test_bad_redis_urls_are_refused_before_any_connection(url: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        open_driver(url)
    assert "secret" not in str(refused.value)


def test_a_redis_prefix_with_braces_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="braces"):
        open_driver("redis://127.0.0.1:6379/0?prefix=a{b}")


def test_a_redis_url_opens_the_store_under_its_prefix() -> None:
    from taskharbor.drivers.redis import RedisDriver

    driver = open_driver("redis://127.0.0.1:6379/0?prefix=url_test")
    try:
        assert isinstance(driver, RedisDriver)
        assert driver.prefix == "{url_test}:"
    finally:
        driver.close()
