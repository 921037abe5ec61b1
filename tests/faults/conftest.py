"""The fault suite's shared setup: its helpers importable by name, and the summary table.

The helpers live next to the tests in this folder (it is not a package), so
the folder goes on ``sys.path`` before the test modules are imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fault_table


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if fault_table.ROWS:
        terminalreporter.section("fault scenarios")
        terminalreporter.write_line(fault_table.render(fault_table.ROWS))
