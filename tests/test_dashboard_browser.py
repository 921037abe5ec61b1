"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright)
against a PostgreSQL store holding real jobs run by a real worker."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from driver_registry import POSTGRES_URL, skip_without_postgres

pytest.importorskip("playwright", reason="the dashboard's browser tests need playwright")

from taskharbor.spec import JobState

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.postgres, pytest.mark.timing]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dashboard_screenshots", ROOT / "scripts/dashboard_screenshots.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


shots = _script()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium)")
    with shots.chromium() as launched:
        yield launched


@pytest.fixture
def demo() -> Iterator[Any]:
    skip_without_postgres()
    with shots.demo_store(POSTGRES_URL) as driver:
        yield shots.populate(driver)


@pytest.fixture
def served(demo: Any) -> Iterator[str]:
    with shots.serve(demo.app.driver, refresh_seconds=0.3, sample_seconds=0.2) as base:
        yield base


def test_every_page_loads_without_an_error(browser: Any, demo: Any, served: str) -> None:
    page = browser.new_page()
    watch = shots.PageErrors(page)
    paths = {
        "/": "Queues",
        "/jobs": "Jobs",
        "/jobs?state=dead&queue=default&since=1h": "billing.charge_card",
        f"/jobs/{demo.failed_job}": "PaymentDeclined",
        "/dlq": "Dead-letter queue",
        "/workflows": "warehouse-sync",
        f"/workflows/{demo.workflow}": "etl.load",
        "/schedules": "daily-report",
        "/workers": "video.transcode",
        "/contract": "lease_expired",
    }
    for path, expected in paths.items():
        response = page.goto(served + path)
        assert response is not None and response.status == 200, path
        assert expected in page.inner_text("main"), path
    assert page.locator("svg.lifecycle").count() == 2
    page.goto(f"{served}/workflows/{demo.workflow}")
    assert page.locator("svg.graph g.node").count() == 4
    assert page.locator("svg.graph g.node.state-dead").count() == 1
    page.goto(served + "/")
    assert page.locator("table.workers tr.alive").count() == 2
    assert watch.errors == []


def _signed_in_on_the_dlq(browser: Any, served: str) -> Any:
    """A page signed in through the form, on the dead-letter queue."""
    page = browser.new_page()
    page.goto(f"{served}/dlq")
    page.click("text=Sign in")
    page.fill("#token", "secret-token")
    page.click("#sign-in")
    assert page.url.endswith("/dlq")
    return page


def _confirm_on_the_dlq(page: Any, demo: Any, job_id: int, action: str) -> None:
    """Tick a dead job, choose ``action``, see the confirmation change nothing, confirm."""
    page.check(f"input[name=ids][value='{job_id}']")
    page.click(f"#{action}-selected")
    assert f"{action.capitalize()} 1 job?" in page.inner_text("h1")
    assert demo.app.get_job(job_id).state == JobState.DEAD
    page.click("#confirm")
    assert f"{action.capitalize()}: 1 job" in page.inner_text("#done")


def test_requeue_a_dead_job_from_the_page_and_see_it_succeed(
    browser: Any, demo: Any, served: str
) -> None:
    page = _signed_in_on_the_dlq(browser, served)
    _confirm_on_the_dlq(page, demo, demo.dead_flaky, "requeue")
    demo.flaky["fail"] = False  # the SMTP server is back
    shots.run_worker(demo.app, ["mail"])
    assert demo.app.get_job(demo.dead_flaky).state == JobState.SUCCEEDED
    page.goto(f"{served}/jobs/{demo.dead_flaky}")
    assert "succeeded" in page.inner_text("h1")
    assert "ConnectionError" in page.inner_text("main")  # the earlier attempt's error stays


def test_cancel_a_dead_job_from_the_page_after_a_confirmation(
    browser: Any, demo: Any, served: str
) -> None:
    page = _signed_in_on_the_dlq(browser, served)
    _confirm_on_the_dlq(page, demo, demo.failed_job, "cancel")
    cancelled = demo.app.get_job(demo.failed_job)
    assert cancelled.state == JobState.CANCELLED and cancelled.errors
    page.goto(f"{served}/dlq")
    assert page.locator(f"input[name=ids][value='{demo.failed_job}']").count() == 0


def test_hostile_args_and_errors_are_text_never_script(
    browser: Any, demo: Any, served: str
) -> None:
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for path in (f"/jobs/{demo.dead_hostile}", "/dlq", "/jobs", "/"):
        page.goto(served + path)
        page.wait_for_timeout(400)  # a live refresh or two
        assert page.evaluate("window.__xss") is None, path
    page.goto(f"{served}/jobs/{demo.dead_hostile}")
    assert shots.XSS_ARG in page.inner_text("#args")
    assert shots.XSS_ERROR in page.inner_text("details.error-box summary")
    assert shots.XSS_TAG in page.inner_text("dd.tags")
    assert shots.XSS_META in page.inner_text("#meta")
    page.goto(f"{served}/jobs?tag=imports")
    page.wait_for_timeout(400)
    assert page.evaluate("window.__xss") is None
    assert page.locator(f'a[href="/jobs/{demo.dead_hostile}"]').count() == 1
    assert page.locator("main img").count() == 0
    assert dialogs == []


def test_pages_refresh_live_without_a_reload(browser: Any, demo: Any, served: str) -> None:
    page = browser.new_page()
    page.goto(served + "/")
    page.evaluate("window.__kept = 'same document'")
    reports = demo.app.get_task("reports.build")
    for day in range(5):
        reports.enqueue(f"extra-{day}")
    deadline = time.monotonic() + 30
    cell = "main table.queues tr:has-text('reports') td:nth-child(4)"
    while page.inner_text(cell).strip() != "8":
        assert time.monotonic() < deadline, page.inner_text(cell)
        page.wait_for_timeout(100)
    assert page.evaluate("window.__kept") == "same document"


def test_the_screenshots_regenerate(browser: Any, tmp_path: Path) -> None:
    skip_without_postgres()
    assert shots.main(["--out", str(tmp_path), "--url", POSTGRES_URL], browser) == 0
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["dashboard-job.png", "dashboard-overview.png", "dashboard-workflow.png"]
    assert all(p.stat().st_size > 10_000 for p in tmp_path.glob("*.png"))
