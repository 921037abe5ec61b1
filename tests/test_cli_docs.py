"""docs/cli.md is what scripts/gen_cli_docs.py writes, and holds the real ``--help``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from test_cli_support import invoke

ROOT = Path(__file__).resolve().parent.parent


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts/gen_cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_current() -> None:
    written = (ROOT / "docs/cli.md").read_text()
    assert written == generator().render_docs(), "run: python scripts/gen_cli_docs.py"


COMMANDS = [path for path, _ in generator().commands(generator().main)]


def test_every_command_is_documented() -> None:
    assert {"taskharbor worker", "taskharbor jobs list", "taskharbor dlq requeue"} <= set(COMMANDS)
    assert "taskharbor schedules drop" in COMMANDS
    assert "taskharbor queues pause" in COMMANDS
    assert "taskharbor workers" in COMMANDS
    assert "taskharbor dlq cancel" in COMMANDS
    assert len(COMMANDS) == 33


@pytest.mark.parametrize("path", COMMANDS)
def test_the_docs_hold_each_command_s_real_help(path: str) -> None:
    result = invoke([*path.split()[1:], "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert f"```text\n{result.stdout.rstrip()}\n```" in (ROOT / "docs/cli.md").read_text()
