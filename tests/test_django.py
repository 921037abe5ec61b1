"""Django on PostgreSQL: a real small project (tests/django_project) run through manage.py.

An order placed inside ``transaction.atomic()`` commits with its workflow,
enqueued on Django's own connection; a refused order leaves neither row nor
job; ``manage.py taskharbor worker --burst`` runs the jobs with Django set up
(the handler uses the ORM), and ``manage.py taskharbor jobs list --json``
reads them.  The code docs/integrations.md shows is this project's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from test_engine_support import import_error_without
from test_postgres_support import drop_schema, unique_schema

from driver_registry import POSTGRES_URL, skip_without_postgres

pytestmark = pytest.mark.postgres

PROJECT = Path(__file__).resolve().parent / "django_project"
PAGE = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


@pytest.fixture
def schema() -> Iterator[str]:
    skip_without_postgres()
    pytest.importorskip("django")
    name = unique_schema()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        drop_schema(name)
        drop_schema(f"{name}_jobs")


def manage(schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TASKHARBOR_TEST_POSTGRES": POSTGRES_URL, "SHOP_SCHEMA": schema}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def shell(schema: str, code: str) -> subprocess.CompletedProcess[str]:
    return manage(schema, "shell", "--verbosity", "0", "-c", code)


def test_an_order_commits_with_its_workflow_and_the_worker_ships_it(schema: str) -> None:
    migrated = manage(schema, "migrate", "--run-syncdb")
    assert migrated.returncode == 0, migrated.stderr
    placed = shell(schema, "from shop.orders import place_order; print(place_order(42))")
    assert placed.returncode == 0, placed.stderr
    again = shell(schema, "from shop.models import Order; print(Order.objects.count())")
    assert again.stdout.strip() == "1"
    refused = shell(schema, "from shop.orders import place_order; place_order(13, refuse=True)")
    assert "payment refused" in refused.stderr

    worker = manage(schema, "taskharbor", "worker", "--burst")
    assert worker.returncode == 0, worker.stderr
    listed = manage(schema, "taskharbor", "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)["jobs"]
    assert [(job["task"], job["state"], job["args"]) for job in jobs] == [
        ("charge", "succeeded", [42]),
        ("ship", "succeeded", [42]),
    ]
    with psycopg.connect(POSTGRES_URL) as conn:
        orders = conn.execute(
            sql.SQL("SELECT id, shipped FROM {}").format(sql.Identifier(schema, "shop_order"))
        ).fetchall()
    assert orders == [(42, True)]
    stats = manage(schema, "taskharbor", "stats")
    assert stats.returncode == 0, stats.stderr


def test_the_page_shows_the_projects_code() -> None:
    """Every block of docs/integrations.md marked ``<!-- file: PATH -->`` is that file."""
    page = PAGE.read_text()
    shown = re.findall(r"<!-- file: (\S+) -->\n```python\n(.*?)```", page, flags=re.DOTALL)
    assert {path for path, _ in shown} == {
        "tests/django_project/shop/tasks.py",
        "tests/django_project/shop/orders.py",
    }
    root = PAGE.parent.parent
    for path, code in shown:
        assert code == (root / path).read_text(), f"{path} differs from the page"


def test_the_integration_says_which_extra_is_missing() -> None:
    message = import_error_without("django", "taskharbor.contrib.django")
    assert "pip install 'taskharbor[django]'" in message
