"""Screenshots of the dashboard for the docs, taken in a real headless Chromium.

    python scripts/dashboard_screenshots.py [--out docs/images] [--url URL]

Fills a fresh store (a temporary SQLite file, or the PostgreSQL ``--url``
given, in a schema of its own that is dropped after) with real jobs run by a
real worker, serves the dashboard on a free local port, and saves the
overview, a job and a workflow graph as PNG.  Fails when a page answers with
an error or logs a JavaScript error.  The browser tests use the same helpers.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import taskharbor as th
from taskharbor.spec import Driver, WorkerInfo

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS_ARG = "<img src=x onerror=window.__xss='args'>"
XSS_ERROR = "<script>window.__xss='error'</script><svg onload=\"window.__xss='svg'\">"
XSS_TAG = "<img src=x onerror=window.__xss='tag'>"
XSS_META = "<script>window.__xss='meta'</script>"


class PaymentDeclined(Exception):
    """The demo's failure."""


@dataclass
class Demo:
    """A populated store and the ids the pages and tests look at."""

    app: th.App
    flaky: dict[str, bool]
    dead_flaky: int
    dead_hostile: int
    failed_job: int
    workflow: int


def populate(driver: Driver) -> Demo:
    """Real jobs run by a real worker: successes, dead letters (one with hostile
    args and error message), jobs waiting, a chain and a chord in mixed states."""
    app = th.App(driver=driver)
    flaky = {"fail": True}

    @app.task(name="billing.charge_card", max_attempts=2, backoff=th.Backoff.constant(0.01))
    def charge_card(order: int, amount: float) -> str:
        if order % 7 == 3:
            raise PaymentDeclined(f"card declined for order {order}: insufficient funds")
        return f"receipt-{order}"

    @app.task(name="mail.send_welcome", queue="mail")
    def send_welcome(address: str) -> None:
        if flaky["fail"]:
            raise ConnectionError(f"SMTP server refused {address}: 421 try again later")

    @app.task(name="hostile.task", max_attempts=1)
    def hostile(payload: str) -> None:
        raise ValueError(XSS_ERROR)

    @app.task(name="reports.build", queue="reports")
    def build_report(day: str) -> str:
        return f"report {day}"

    @app.task(name="etl.extract")
    def extract(source: str) -> list[int]:
        return [len(source), 2, 3]

    @app.task(name="etl.transform")
    def transform(rows: list[int]) -> int:
        return sum(rows)

    @app.task(name="etl.load", max_attempts=2, backoff=th.Backoff.constant(0.01))
    def load(totals: list[int]) -> int:
        if len(totals) > 2:
            raise PaymentDeclined("warehouse rejected the batch: quota exceeded")
        return sum(totals)

    for order in range(1, 41):
        charge_card.enqueue(order, 10.0 + order)
    dead_flaky = send_welcome.options(max_attempts=1).enqueue("ada@example.com").id
    labels = hostile.options(tags=["imports", XSS_TAG], meta={"note": XSS_META})
    dead_hostile = labels.enqueue(XSS_ARG).id
    chain = th.chain(extract.s("crm"), transform.s())
    chord = th.chord([extract.s("erp"), extract.s("web"), extract.s("pos")], load.s())
    app.enqueue(chain, name="nightly-etl")
    workflow = app.enqueue(chord, name="warehouse-sync").id
    for _ in range(3):  # the retries are due a moment after each pass
        run_worker(app, ["default", "mail"])
        time.sleep(0.05)
    for day in ("2026-11-30", "2026-12-01", "2026-12-02"):
        build_report.enqueue(day)
    build_report.options(delay=3600).enqueue("2026-12-03")
    if driver.capabilities.schedules:
        app.periodic(build_report.s("daily"), cron="0 6 * * *", name="daily-report")
        app.periodic(charge_card.s(0, 0.0), every=300, name="settle-cards")
        driver.sync_schedules(list(app.schedules))
        driver.pause_schedules(["settle-cards"], True)
    if driver.capabilities.workers:
        register_workers(app)
    failed = next(j for j in app.list_jobs(state="dead", task="billing.charge_card"))
    return Demo(app, flaky, dead_flaky, dead_hostile, failed.id, workflow)


def register_workers(app: th.App) -> None:
    """Two workers of another fleet in the registry, one of them running two jobs of
    its own queue (the demo's workers run in burst mode and leave when done)."""

    @app.task(name="video.transcode", queue="video")
    def transcode(clip: str) -> None: ...

    fleet = [
        WorkerInfo(f"media-{n}:{pid}", f"media-{n}", pid, ("video",), 4, "1.0", 3600.0)
        for n, pid in ((1, 4242), (2, 5150))
    ]
    app.driver.register_workers(fleet)
    for clip in ("intro.mov", "keynote.mov"):
        transcode.enqueue(clip)
    app.driver.lease(["video"], 2, 3600.0, fleet[0].id)


def run_worker(app: th.App, queues: list[str]) -> None:
    """A worker in burst mode, on a thread of its own (so it gets its own event
    loop even where the caller's thread has one, as under Playwright)."""
    failed: list[BaseException] = []

    def work() -> None:
        try:
            th.Worker(app, queues=queues, concurrency=4, poll_interval=0.05).run(burst=True)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(driver: Driver, token: str | None = "secret-token", **options: Any) -> Iterator[str]:
    """The dashboard of ``driver`` served by uvicorn on a thread; yields its base URL."""
    import uvicorn

    from taskharbor.dashboard import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(driver, token=token, **options), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (no browser is downloaded)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


class PageErrors:
    """Collects what a page must never show: JavaScript errors, failed responses."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"javascript: {exc}"))
        page.on(
            "console",
            lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )
        page.on(
            "response",
            lambda r: self.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )


def shoot(base: str, demo: Demo, out: Path, browser: Any) -> list[Path]:
    """Save the overview, a job and a workflow graph; raise if a page errs."""
    out.mkdir(parents=True, exist_ok=True)
    shots = [
        ("dashboard-overview.png", "/"),
        ("dashboard-job.png", f"/jobs/{demo.failed_job}"),
        ("dashboard-workflow.png", f"/workflows/{demo.workflow}"),
    ]
    saved = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageErrors(page)
    for name, path in shots:
        response = page.goto(base + path)
        if response is None or response.status != 200:
            raise RuntimeError(f"{path} answered {None if response is None else response.status}")
        page.screenshot(path=str(out / name), full_page=True)
        saved.append(out / name)
    page.close()
    if watch.errors:
        raise RuntimeError("the pages reported errors: " + "; ".join(watch.errors))
    return saved


@contextlib.contextmanager
def demo_store(url: str | None) -> Iterator[Driver]:
    """A fresh store: a temporary SQLite file, or a new schema on the PostgreSQL ``url``."""
    if url is None:
        from taskharbor.drivers.sqlite import SQLiteDriver

        with tempfile.TemporaryDirectory() as folder:
            driver = SQLiteDriver(Path(folder) / "demo.db")
            driver.migrate()
            try:
                yield driver
            finally:
                driver.close()
        return
    import uuid

    import psycopg

    from taskharbor.drivers.postgres import PostgresDriver

    schema = f"th_dashboard_{uuid.uuid4().hex[:10]}"
    driver = PostgresDriver(url, schema=schema)
    try:
        driver.migrate()
        yield driver
    finally:
        driver.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main(argv: list[str] | None = None, browser: Any = None) -> int:
    """The script; ``browser`` is a launched one to use (else Chromium is launched)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "docs/images")
    parser.add_argument("--url", help="a PostgreSQL URL (default: a temporary SQLite file)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if browser is None:
            browser = stack.enter_context(chromium())
        driver = stack.enter_context(demo_store(args.url))
        base = stack.enter_context(serve(driver, sample_seconds=0.1))
        time.sleep(0.3)  # the first samples of the counts, so the chart shows the run
        demo = populate(driver)
        time.sleep(0.3)
        for saved in shoot(base, demo, args.out, browser):
            print(saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
