"""docs/index.md and the README's example work as written."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDEX = ROOT / "docs" / "index.md"
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


def blocks(language: str, page: Path = INDEX) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.DOTALL)


def commands() -> list[list[str]]:
    """Every shell command after the install step, comments stripped."""
    found = []
    for block in blocks("sh")[1:]:
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                found.append(shlex.split(line))
    return found


def test_the_five_minute_start_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(blocks("python")[0])
    outputs = []
    for argv in commands():
        program = sys.executable if argv[0] == "python" else str(BIN / argv[0])
        done = subprocess.run(
            [program, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{shlex.join(argv)} failed:\n{done.stderr}"
        outputs.append(done)
    assert "enqueued job 1" in outputs[0].stdout
    assert "succeeded" in outputs[1].stderr
    stats = json.loads(outputs[-1].stdout)
    assert json.dumps(stats)  # parsed; the counts say every job succeeded
    assert "succeeded" in outputs[2].stdout


def test_the_readme_example_prints_the_chord_result(tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(blocks("python", README)[0])
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "6"
