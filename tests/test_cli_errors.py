"""Every failure of the CLI is one line on stderr with a meaningful exit status
(2: usage, 1: operational), never a traceback, and never shows a password."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli_support import (
    AppModule,
    CliStore,
    app_module,
    cli_store,
    invoke,
    one_error_line,
)

from driver_registry import POSTGRES_URL, skip_without_postgres
from taskharbor.cli.store import mask_secrets

__all__ = ["app_module", "cli_store"]


@pytest.mark.parametrize(
    "command",
    [["jobs", "show", "999"], ["jobs", "cancel", "999"], ["jobs", "retry", "999"]],
)
def test_an_unknown_job_id(cli_store: CliStore, command: list[str]) -> None:
    result = cli_store.run(*command)
    assert result.exit_code == 1
    assert one_error_line(result) == "Error: job 999 not found (never enqueued, or pruned)"


def test_an_unknown_job_among_known_ones_changes_nothing(cli_store: CliStore) -> None:
    (job,) = cli_store.enqueue()
    result = cli_store.run("jobs", "cancel", str(job.id), "999")
    assert result.exit_code == 1
    assert "job 999 not found" in one_error_line(result)
    assert cli_store.driver.get([job.id])[0].state == "available"


def test_an_unknown_workflow_id(cli_store: CliStore) -> None:
    result = cli_store.run("workflows", "show", "77")
    assert result.exit_code == 1
    assert "workflow 77 not found" in one_error_line(result)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["jobs", "list", "--state", "sleeping"], "'sleeping' is not one of"),
        (["jobs", "list", "--since", "yesterday"], "neither a duration"),
        (["jobs", "list", "--limit", "0"], "--limit"),
        (["jobs", "show", "abc"], "'abc' is not a valid integer"),
        (["jobs", "show", "0"], "0 is not in the range"),
        (["jobs", "cancel"], "Missing argument"),
        (["jobs", "frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors(cli_store: CliStore, args: list[str], expected: str) -> None:
    result = cli_store.run(*args)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert expected in line
    assert "--help" in line  # where to read more


def test_app_and_url_together(cli_store: CliStore, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/other.db"
    both = invoke(["--app", cli_store.app_path, "--url", url, "jobs", "list"])
    assert both.exit_code == 2
    assert "give --app or --url, not both" in one_error_line(both)
    (job,) = cli_store.enqueue()
    # Given on the command line beats set in the environment.
    listed = invoke(["--app", cli_store.app_path, "jobs", "list"], env={"TASKHARBOR_URL": url})
    assert f" {job.id} " in listed.stdout
    assert invoke(["--url", url, "migrate"]).exit_code == 0  # a URL never creates a schema
    from_env = invoke(["--url", url, "jobs", "list"], env={"TASKHARBOR_APP": cli_store.app_path})
    assert from_env.exit_code == 0 and from_env.stdout.strip() == "no jobs match"


@pytest.mark.parametrize(
    ("app_path", "expected"),
    [
        ("no_such_module_anywhere:app", "no module named 'no_such_module_anywhere'"),
        ("just_a_module", "is not of the form module:attr"),
        (":app", "is not of the form module:attr"),
        ("json:app", "json has no attribute 'app'"),
        ("json:dumps", "is a function, not a taskharbor App"),
    ],
)
def test_an_app_path_that_does_not_load(app_path: str, expected: str) -> None:
    result = invoke(["--app", app_path, "jobs", "list"])
    assert result.exit_code == 2
    assert expected in one_error_line(result)


def test_an_app_module_that_raises_while_importing(app_module: AppModule) -> None:
    name = app_module(
        "import taskharbor\nraise RuntimeError('no config for postgresql://u:pw@db/x')\n"
    )
    result = invoke(["--app", f"{name}:app", "stats"])
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"importing '{name}:app' failed: RuntimeError: no config" in line
    assert "pw" not in line and "postgresql://u:***@db/x" in line


def test_an_app_module_missing_a_dependency(app_module: AppModule) -> None:
    name = app_module("import a_dependency_that_is_not_installed\n")
    result = invoke(["--app", f"{name}:app", "stats"])
    assert result.exit_code == 1
    assert "No module named 'a_dependency_that_is_not_installed'" in one_error_line(result)


def test_a_url_of_an_unknown_scheme_never_shows_its_password() -> None:
    result = invoke(["--url", "mysql://admin:hunter2@db.example/prod", "stats"])
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "unknown storage URL scheme 'mysql'" in line and "hunter2" not in line


def test_a_memory_url_is_refused() -> None:
    result = invoke(["--url", "memory://", "stats"])
    assert result.exit_code == 2
    assert "a memory:// store lives inside one process" in one_error_line(result)


def test_a_malformed_postgres_url() -> None:
    skip_without_postgres()
    result = invoke(["--url", f"{POSTGRES_URL}?no_such_option=1", "stats"])
    assert result.exit_code == 2
    assert "no_such_option" in one_error_line(result)


def test_a_sqlite_url_without_a_path() -> None:
    result = invoke(["--url", "sqlite://", "stats"])
    assert result.exit_code == 2
    assert "has no file path" in one_error_line(result)


def test_a_sqlite_url_naming_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("shopping list\n")
    result = invoke(["--url", f"sqlite:///{tmp_path}/notes.txt", "jobs", "list"])
    assert result.exit_code == 1
    assert "is not an SQLite database" in one_error_line(result)


def test_an_unreachable_database_never_shows_its_password() -> None:
    result = invoke(["--url", "postgresql://ops:s3cr3t@127.0.0.1:1/jobs", "stats"])
    assert result.exit_code == 1
    line = one_error_line(result)
    assert line.startswith(
        "Error: cannot open store postgresql://ops:***@127.0.0.1:1/jobs: "
        "cannot connect to PostgreSQL at 127.0.0.1:1 (dbname jobs, user ops): "
    )
    assert "Connection refused" in line
    assert "s3cr3t" not in line


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("at postgres://u:p%40ss@h:5432/db?x=1 now", "at postgres://u:***@h:5432/db?x=1 now"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        ("host=h password=secret user=u", "host=h password=*** user=u"),
        ("host=h password='a b' user=u", "host=h password=*** user=u"),
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked
