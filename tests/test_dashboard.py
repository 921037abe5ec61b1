"""The dashboard over HTTP (no browser): pages, escaping, security, errors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is part of the dev install")

from starlette.testclient import TestClient

import taskharbor as th
from taskharbor.dashboard import create_app
from taskharbor.dashboard.security import SESSION_COOKIE
from taskharbor.drivers.sqlite import SQLiteDriver
from taskharbor.spec import JobState

TOKEN = "correct horse battery staple"
HOSTILE = '<script>alert("x")</script>'


@pytest.fixture
def app(tmp_path: Path) -> Iterator[th.App]:
    driver = SQLiteDriver(tmp_path / "store.db")
    driver.migrate()
    app = th.App(driver=driver)

    @app.task(name=HOSTILE, max_attempts=1)
    def hostile(payload: str) -> None:
        raise ValueError(HOSTILE)

    @app.task(name="add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    hostile.enqueue(HOSTILE)
    app.enqueue(th.chord([add.s(1), add.s(2)], add.s()), name=HOSTILE)
    add.enqueue(5)
    th.Worker(app, concurrency=2, poll_interval=0.05).run(burst=True)
    add.options(delay=600).enqueue(7)
    yield app
    driver.close()


def client(app: th.App, **options: object) -> TestClient:
    return TestClient(create_app(app.driver, **{"token": TOKEN, **options}))  # type: ignore[arg-type]


def sign_in(web: TestClient) -> str:
    """Signs in and returns the CSRF token of the session."""
    response = web.post("/login", data={"token": TOKEN, "next": "/dlq"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/dlq"
    assert "httponly" in response.headers["set-cookie"].lower()
    assert "samesite=strict" in response.headers["set-cookie"].lower()
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', web.get("/dlq").text)
    assert found, "a signed-in page carries the CSRF token"
    return found.group(1)


def dead_id(app: th.App) -> int:
    return app.list_jobs(state="dead")[0].id


PAGES = ["/", "/jobs", "/jobs/1", "/dlq", "/workflows", "/workflows/1", "/schedules", "/contract"]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_answers_escaped_with_its_security_headers(app: th.App, path: str) -> None:
    with client(app) as web:
        response = web.get(path)
    assert response.status_code == 200
    assert HOSTILE not in response.text
    assert "<script>" not in response.text.replace('<script src="/static/dashboard.js"', "")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert response.headers["x-frame-options"] == "DENY"


def test_hostile_values_are_shown_as_text(app: th.App) -> None:
    with client(app) as web:
        page = web.get(f"/jobs/{dead_id(app)}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


def test_a_fragment_is_the_main_part_only(app: th.App) -> None:
    with client(app) as web:
        whole = web.get("/")
        part = web.get("/", headers={"X-Fragment": "1"})
    assert "<html" in whole.text and "<html" not in part.text
    assert "Queues" in part.text


def test_jobs_filters_and_pages_newest_first(app: th.App) -> None:
    add = app.get_task("add")
    assert add is not None
    for n in range(60):
        add.enqueue(n)
    with client(app) as web:
        first = web.get("/jobs?state=available").text
        ids = [int(i) for i in re.findall(r'href="/jobs/(\d+)">#', first)]
        older = re.search(r'href="/jobs\?([^"]*before=\d+[^"]*)"', first)
        assert older, "a next page"
        second = web.get("/jobs?" + older.group(1).replace("&amp;", "&")).text
        ids2 = [int(i) for i in re.findall(r'href="/jobs/(\d+)">#', second)]
        assert web.get("/jobs?state=nonsense").status_code == 400
        assert web.get("/jobs?since=1h&task=add").status_code == 200
    assert len(ids) == 50 and ids == sorted(ids, reverse=True)
    assert ids2 and max(ids2) < min(ids)
    assert len(ids) + len(ids2) == 60
    assert re.search(r"after=\d+", second), "a link back to the newer page"


def test_requeue_needs_a_session_and_its_csrf_token(app: th.App) -> None:
    job = dead_id(app)
    form = {"action": "requeue", "ids": str(job), "back": "/dlq"}
    with client(app) as web:
        assert web.post("/actions/apply", data=form).status_code == 403  # not signed in
        assert web.post("/login", data={"token": "wrong"}).status_code == 403
        csrf = sign_in(web)
        assert web.post("/actions/apply", data=form).status_code == 403  # no CSRF token
        assert web.post("/actions/apply", data={**form, "csrf": "0" * 64}).status_code == 403
        foreign = web.post(
            "/actions/apply", data={**form, "csrf": csrf}, headers={"origin": "https://evil.test"}
        )
        assert foreign.status_code == 403
        assert app.get_job(job).state == JobState.DEAD
        confirm = web.post("/actions/confirm", data={**form, "csrf": csrf})
        assert confirm.status_code == 200 and "Requeue 1 job?" in confirm.text
        assert app.get_job(job).state == JobState.DEAD  # confirming changes nothing yet
        done = web.post("/actions/apply", data={**form, "csrf": csrf})
    assert done.status_code == 200 and "Requeue: 1 job" in done.text
    assert app.get_job(job).state == JobState.AVAILABLE


def test_a_session_cookie_this_process_did_not_sign_is_refused(app: th.App) -> None:
    with client(app) as web:
        web.cookies.set(SESSION_COOKIE, "nonce.deadbeef")
        assert "sign in to act" in web.get("/dlq").text


def test_cancel_skips_the_jobs_the_contract_does_not_allow(app: th.App) -> None:
    scheduled = app.list_jobs(state="scheduled")[0].id
    succeeded = app.list_jobs(state="succeeded")[0].id
    with client(app) as web:
        csrf = sign_in(web)
        form = {"action": "cancel", "ids": [str(scheduled), str(succeeded)], "csrf": csrf}
        confirm = web.post("/actions/confirm", data=form).text
        assert "Cancel 1 job?" in confirm and "Not possible for 1" in confirm
        web.post("/actions/apply", data=form)
    assert app.get_job(scheduled).state == JobState.CANCELLED
    assert app.get_job(succeeded).state == JobState.SUCCEEDED


def test_dead_jobs_are_cancelled_from_the_dlq_after_a_confirmation(app: th.App) -> None:
    hostile = app.get_task(HOSTILE)
    assert hostile is not None
    hostile.enqueue("again")
    th.Worker(app, poll_interval=0.05).run(burst=True)
    dead = [job.id for job in app.list_jobs(state="dead")]
    assert len(dead) == 2
    with client(app) as web:
        assert "Cancel selected" not in web.get("/dlq").text  # signed out
        csrf = sign_in(web)
        assert "Cancel selected" in web.get("/dlq").text
        form = {"action": "cancel", "ids": [str(i) for i in dead], "csrf": csrf, "back": "/dlq"}
        assert web.post("/actions/apply", data={**form, "csrf": ""}).status_code == 403
        confirm = web.post("/actions/confirm", data=form).text
        assert "Cancel 2 jobs?" in confirm
        assert {job.state for job in app.list_jobs(state="dead")} == {JobState.DEAD}
        done = web.post("/actions/apply", data=form).text
    assert "Cancel: 2 jobs" in done
    assert app.list_jobs(state="dead") == []
    assert all(app.get_job(i).errors for i in dead)


def test_read_only_offers_and_accepts_no_action(app: th.App) -> None:
    with client(app, read_only=True) as web:
        page = web.get("/dlq").text
        assert "Requeue selected" not in page and "read-only" in page
        assert web.post("/login", data={"token": TOKEN}).status_code == 403
        refused = web.post("/actions/apply", data={"action": "requeue", "ids": "1"})
    assert refused.status_code == 403
    assert app.get_job(dead_id(app)).state == JobState.DEAD


def test_unknown_ids_and_bad_input_are_pages_that_say_so(app: th.App) -> None:
    with client(app) as web:
        missing = web.get("/jobs/99999")
        assert missing.status_code == 404 and "99999" in missing.text
        assert web.get("/workflows/99999").status_code == 404
        assert web.get("/nowhere").status_code == 404
        csrf = sign_in(web)
        empty = web.post("/actions/confirm", data={"action": "requeue", "csrf": csrf})
        assert empty.status_code == 400 and "no job selected" in empty.text


class _Broken(SQLiteDriver):
    def count(self):  # type: ignore[no-untyped-def]
        raise ConnectionError("cannot reach postgresql://admin:hunter2@db.internal:5432/jobs")


def test_a_failing_store_never_shows_its_url_or_password(tmp_path: Path) -> None:
    driver = _Broken(tmp_path / "broken.db")
    driver.migrate()
    with TestClient(create_app(driver, token=TOKEN, sample_seconds=3600)) as web:
        response = web.get("/")
    driver.close()
    assert response.status_code == 503
    assert "ConnectionError" in response.text
    assert "hunter2" not in response.text and "db.internal" not in response.text


def test_a_store_without_schedules_says_so(tmp_path: Path) -> None:
    from taskharbor.drivers.memory import MemoryDriver
    from taskharbor.spec import Capabilities

    class Plain(MemoryDriver):
        capabilities = Capabilities()

    with TestClient(create_app(Plain(), token=TOKEN)) as web:
        page = web.get("/schedules").text
    assert "Not supported by this store" in page


def test_the_cli_serves_the_dashboard_on_loopback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    port = _free_port()
    store = tmp_path / "cli.db"
    SQLiteDriver(store).migrate()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "taskharbor"),
            "--url",
            f"sqlite:///{store}",
            "dashboard",
            "--port",
            str(port),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TASKHARBOR_DASHBOARD_TOKEN"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    assert response.status == 200
                    break
            except urllib.error.HTTPError as exc:
                pytest.fail(f"the overview answered {exc.code}")
            except OSError:  # not listening yet
                assert process.poll() is None, "the dashboard exited"
                assert time.monotonic() < deadline, "the dashboard did not answer"
                time.sleep(0.2)
    finally:
        process.terminate()
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
    assert f"on http://127.0.0.1:{port}/" in err
    assert "token (to sign in and act): " in err  # none given: a random one is printed


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_queue_is_paused_and_resumed_from_the_overview(app: th.App) -> None:
    with client(app) as web:
        csrf = sign_in(web)
        assert "Pause</button>" in web.get("/").text
        form = {"action": "pause_queue", "names": "default", "csrf": csrf, "back": "/"}
        web.post("/actions/apply", data=form)
        assert [r.name for r in app.driver.paused_queues()] == ["default"]
        assert "paused</span> since" in web.get("/").text
        web.post("/actions/apply", data={**form, "action": "resume_queue"})
        assert app.driver.paused_queues() == []
        unsigned = TestClient(create_app(app.driver, token=TOKEN))
        assert unsigned.post("/actions/apply", data=form).status_code == 403
    assert app.driver.paused_queues() == []


def test_live_workers_on_the_overview_and_the_jobs_each_runs(tmp_path: Path) -> None:
    from taskharbor.drivers.memory import MemoryDriver
    from taskharbor.spec import EnqueueRequest, FakeClock, WorkerInfo

    clock = FakeClock()
    driver = MemoryDriver(clock=clock)
    busy = WorkerInfo(HOSTILE, HOSTILE, 4242, (HOSTILE,), 4, "1.0", ttl_seconds=90.0)
    lost = WorkerInfo("lost-1", "node-9", 77, ("default",), 2, "1.0", ttl_seconds=30.0)
    driver.register_workers([busy, lost])
    driver.enqueue([EnqueueRequest(HOSTILE, args=(HOSTILE,), queue=HOSTILE)])
    (job,) = driver.lease([HOSTILE], 1, 60.0, HOSTILE)
    clock.advance(45)
    with TestClient(create_app(driver, token=TOKEN)) as web:
        overview = web.get("/").text
        page = web.get("/workers").text
    assert "1 alive, 1 gone" in overview
    for html in (overview, page):
        assert HOSTILE not in html and "&lt;script&gt;" in html
        assert re.search(r'<tr class="gone">\s*<td class="mono">lost-1</td>', html)
        assert "1/4" in html and "0/2" in html and "45 s ago" in html
    assert f'href="/jobs/{job.id}">#{job.id}</a>' in page
    assert "attempt 1" in page


def test_a_store_without_a_workers_registry_says_so() -> None:
    from taskharbor.drivers.memory import MemoryDriver
    from taskharbor.spec import Capabilities

    class Plain(MemoryDriver):
        capabilities = Capabilities()

    with TestClient(create_app(Plain(), token=TOKEN)) as web:
        for path in ("/", "/workers"):
            assert "it keeps no registry of live workers" in web.get(path).text


# -- the overview's chart: the last hour read from the store ----------------------------


def chart_labels(page: str) -> set[str]:
    """The chart's bar labels (each bar of a minute carries the minute's one label)."""
    return set(re.findall(r"<title>(\d\d:\d\d UTC: [^<]*)</title>", page))


def test_a_dashboard_opened_now_charts_the_past_hour_from_the_store() -> None:
    """Jobs that ended 30 minutes before the dashboard started are on its chart; one that
    ended 61 minutes before is not; the last minute counts what ended in it."""
    from datetime import UTC, datetime

    from taskharbor.drivers.memory import MemoryDriver
    from taskharbor.spec import Completion, EnqueueRequest, ErrorReport, Failure, FakeClock

    clock = FakeClock(datetime(2030, 1, 1, 10, 58, 30, tzinfo=UTC))
    driver = MemoryDriver(clock=clock)

    def finish(count: int, *, dead: bool = False) -> None:
        driver.enqueue([EnqueueRequest("t") for _ in range(count)])
        for job in driver.lease(["default"], count, 30.0, "w"):
            token = str(job.lease_token)
            if dead:
                boom = ErrorReport("ValueError", "boom")
                assert driver.fail([Failure(job.id, token, boom, permanent=True)]) == []
            else:
                assert driver.complete([Completion(job.id, token)]) == []

    finish(4)  # 10:58, out of the last hour at 12:00
    clock.set(datetime(2030, 1, 1, 11, 30, 5, tzinfo=UTC))
    finish(3)
    finish(2, dead=True)
    clock.set(datetime(2030, 1, 1, 12, 0, 10, tzinfo=UTC))
    finish(1)
    with TestClient(create_app(driver, token=TOKEN)) as web:
        page = web.get("/").text
    assert chart_labels(page) == {
        "11:30 UTC: 3 succeeded, 2 dead",
        "12:00 UTC: 1 succeeded, 0 dead",
    }
    assert "Read from the store" in page
    assert "sampled from its totals" not in page


class _CountsReads(SQLiteDriver):
    reads = 0

    def finished_per_minute(self, since, *, queue=None):  # type: ignore[no-untyped-def]
        type(self).reads += 1
        return super().finished_per_minute(since, queue=queue)


def test_the_chart_reads_the_store_at_most_once_per_sample_interval(
    app: th.App, tmp_path: Path
) -> None:
    """The fixture's worker finished its jobs moments ago: they are on the chart of a
    dashboard opened now; pages within ``sample_seconds`` share one read."""
    driver = _CountsReads(app.driver.path)  # type: ignore[attr-defined]
    web = TestClient(create_app(driver, token=TOKEN, sample_seconds=3600))
    first = web.get("/").text
    assert web.get("/").text.count("<rect") == first.count("<rect")
    assert _CountsReads.reads == 1
    succeeded = sum(int(label.split(": ")[1].split()[0]) for label in chart_labels(first))
    assert succeeded == len(app.list_jobs(state="succeeded"))
    assert any(" 1 dead" in label for label in chart_labels(first)), chart_labels(first)
    driver.close()


def test_a_store_without_finished_counts_samples_and_says_so() -> None:
    from taskharbor.drivers.memory import MemoryDriver
    from taskharbor.spec import Capabilities

    class Plain(MemoryDriver):
        capabilities = Capabilities()

    with TestClient(create_app(Plain(), token=TOKEN)) as web:
        page = web.get("/").text
    assert "keeps no count of finished jobs per minute" in page
    assert "(when this dashboard started)" in page
    assert "Read from the store" not in page
