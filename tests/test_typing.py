"""``task.enqueue(...)``, ``.s(...)`` and ``.si(...)`` are checked by mypy against the
handler's signature: mypy runs once on tests/typing/task_calls.py, and reports exactly
the lines marked ``# refused``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CALLS = Path(__file__).resolve().parent / "typing" / "task_calls.py"


def test_mypy_reports_exactly_the_refused_calls(tmp_path: Path) -> None:
    lines = CALLS.read_text().splitlines()
    refused = {number for number, line in enumerate(lines, 1) if line.endswith("# refused")}
    assert len(refused) >= 10
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--follow-imports=silent",
            str(CALLS),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    reported = {
        int(match.group(1))
        for match in re.finditer(rf"{re.escape(CALLS.name)}:(\d+): error", done.stdout)
    }
    assert reported == refused, done.stdout
