"""The dashboard's tags, meta and progress: the jobs page filters by tag, the job page
shows them, and every one of them is hostile text shown as text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is part of the dev install")

from starlette.testclient import TestClient

import taskharbor as th
from taskharbor.dashboard import create_app
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.spec import LeaseRef, Progress

HOSTILE = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[th.App]:
    driver = SQLiteDriver(tmp_path / "store.db")
    driver.migrate()
    app = th.App(driver=driver)

    @app.task(name="report")
    def report(n: int) -> int:
        return n

    report.enqueue(0)
    report.options(tags=["nightly", HOSTILE], meta={"owner": HOSTILE, "n": 1}).enqueue(1)
    (running,) = driver.lease(["default"], 1, 60.0, "w")
    assert running.tags == () and running.lease_token is not None
    report.options(tags=["nightly"]).enqueue(2)
    ref = LeaseRef(running.id, running.lease_token, Progress(0.375, HOSTILE))
    assert not driver.heartbeat([ref], 60.0).lost
    yield app
    driver.close()


def listed(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'href="/jobs/(\d+)">#', page)]


def test_the_jobs_page_filters_by_tag(app: th.App) -> None:
    with TestClient(create_app(app.driver, token="t")) as web:
        everything = web.get("/jobs").text
        nightly = web.get("/jobs?tag=nightly").text
        hostile = web.get("/jobs", params={"tag": HOSTILE}).text
        nothing = web.get("/jobs?tag=none").text
        bad = web.get("/jobs", params={"tag": "x" * 65})
    assert listed(everything) == [3, 2, 1]
    assert listed(nightly) == [3, 2]
    assert 'name="tag" value="nightly"' in nightly
    assert listed(hostile) == [2] and HOSTILE not in hostile and ESCAPED in hostile
    assert listed(nothing) == []
    assert bad.status_code == 400 and "longer than 64 characters" in bad.text


def test_the_job_page_shows_tags_meta_and_progress_as_text(app: th.App) -> None:
    with TestClient(create_app(app.driver, token="t")) as web:
        labelled = web.get("/jobs/2").text
        running = web.get("/jobs/1").text
        plain = web.get("/jobs/3").text
    assert HOSTILE not in labelled + running
    assert 'href="/jobs?tag=nightly"' in labelled
    assert 'href="/jobs?tag=%3Cscript%3Ealert%28%22x%22%29%3C/script%3E"' in labelled
    meta = re.search(r'<pre class="json" id="meta">(.*?)</pre>', labelled, re.DOTALL)
    assert meta and "&lt;script&gt;alert(" in meta.group(1) and "&#34;n&#34;: 1" in meta.group(1)
    assert '<progress max="1" value="0.375"></progress> 37% ' + ESCAPED in running
    assert 'id="progress"' not in plain and 'id="meta"' not in plain


def test_a_store_without_tags_offers_no_tag_filter(tmp_path: Path) -> None:
    from dataclasses import replace

    from taskharbor.drivers.memory import MemoryDriver

    class Unlabelled(MemoryDriver):
        capabilities = replace(MemoryDriver.capabilities, job_metadata=False)

    with TestClient(create_app(Unlabelled(), token="t")) as web:
        page = web.get("/jobs").text
        refused = web.get("/jobs?tag=a")
    assert 'name="tag"' not in page
    assert refused.status_code == 400 and "does not keep tags" in refused.text
