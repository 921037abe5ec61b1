"""Every Python example in docs/guide.md runs as a program of its own."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)


def test_the_guide_has_examples() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_guide_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(EXAMPLES[index])
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"example {index} failed:\n{EXAMPLES[index]}\n{done.stderr}"


def run_demo(folder: Path) -> subprocess.CompletedProcess[str]:
    """``python -m taskharbor.demo`` in ``folder``; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "taskharbor.demo"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_the_demo_runs_on_the_embedded_store(tmp_path: Path) -> None:
    done = run_demo(tmp_path)
    assert (tmp_path / "taskharbor.db").exists()
    assert "demo.flaky_upload attempt 1/3 -> retrying" in done.stderr
    assert "demo.charge_card attempt 2/2 -> dead" in done.stderr
    assert "dead-letter queue of 'demo': 1 job(s)" in done.stdout


def test_the_demo_says_whether_it_reuses_its_store(tmp_path: Path) -> None:
    first = run_demo(tmp_path).stdout
    assert f"on SQLiteDriver: {tmp_path / 'taskharbor.db'}" in first
    assert "a new store: nothing from earlier runs" in first
    second = run_demo(tmp_path).stdout
    assert "reusing this store: it holds 8 job(s) from earlier runs" in second
    assert "dead-letter queue of 'demo': 2 job(s) (1 from this run)" in second
