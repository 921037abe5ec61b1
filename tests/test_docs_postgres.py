"""The transactional-enqueue example of docs/postgres.md runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg

from driver_registry import POSTGRES_URL, skip_without_postgres

PAGE = Path(__file__).resolve().parent.parent / "docs" / "postgres.md"
SCHEMA = "docs_transactional"


def test_the_transactional_example_commits_one_order_once_and_rolls_back_the_other(
    tmp_path: Path,
) -> None:
    skip_without_postgres()
    examples = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    (example,) = [code for code in examples if "connection=conn" in code]
    script = tmp_path / "example.py"
    script.write_text(example.replace("postgresql://root@127.0.0.1:5432/test", POSTGRES_URL))
    try:
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[(42,), ()]"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
