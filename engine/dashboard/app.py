"""The Starlette application: routes, security headers, errors.

Handlers are plain functions run on Starlette's thread pool, so the driver's
blocking calls never run on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from taskharbor.spec import (
    Driver,
    InvalidRequest,
    InvalidTransition,
    JobNotFound,
    JobState,
    TaskHarborError,
    WorkflowNotFound,
)

from . import actions, pages
from .render import Renderer
from .security import SECURITY_HEADERS, Guard
from .throughput import Bucket, Throughput, from_store, window_start

log = logging.getLogger("taskharbor.dashboard")
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Chart:
    """The overview's chart: the last hour's minutes, and where they come from."""

    buckets: list[Bucket]
    from_store: bool
    """Read from the store (``finished_per_minute``); else sampled by this dashboard."""
    sampled_since: datetime | None
    """When this dashboard's sampling began (sampled charts only)."""
    taken: float  # time.monotonic() when read


@dataclass(frozen=True)
class Sample:
    """The store's counts per (queue, state), as of ``at`` (the store's clock)."""

    at: datetime
    counts: Mapping[tuple[str, JobState], int]
    taken: float  # time.monotonic() when taken


class Dashboard:
    """What every handler needs: the store, the guard, the renderer, the samples.

    ``Driver.count`` reads every job (an index-only scan on PostgreSQL: about a
    second for 10 million jobs), so pages share one sample of it, taken by a
    thread every ``sample_seconds`` and by a page that finds it older than that.
    """

    def __init__(
        self, driver: Driver, guard: Guard, refresh_seconds: float, sample_seconds: float
    ) -> None:
        self.driver = driver
        self.guard = guard
        self.renderer = Renderer(HERE / "templates", guard, refresh_seconds)
        self.throughput = Throughput()
        self.sample_seconds = sample_seconds
        self._latest: Sample | None = None
        self._sampling = threading.Lock()
        self._chart: Chart | None = None
        self._charting = threading.Lock()

    def counts(self) -> Sample:
        """The latest sample, or a new one when it is older than ``sample_seconds``."""
        with self._sampling:
            latest = self._latest
            if latest is None or time.monotonic() - latest.taken >= self.sample_seconds:
                latest = self._take()
            return latest

    def chart(self, now: datetime) -> Chart:
        """The last hour's chart: from the store when it keeps finished counts
        (``finished_per_minute``, read at most every ``sample_seconds`` like the
        counts), else from this dashboard's own samples of ``count()``."""
        if not self.driver.capabilities.finished_counts:
            return Chart(
                self.throughput.series(now), False, self.throughput.since, time.monotonic()
            )
        with self._charting:
            chart = self._chart
            if chart is None or time.monotonic() - chart.taken >= self.sample_seconds:
                taken = time.monotonic()
                counts = self.driver.finished_per_minute(window_start(now))
                chart = self._chart = Chart(from_store(counts, now), True, None, taken)
            return chart

    def sample(self) -> Sample:
        """A new sample (the sampling thread's call)."""
        with self._sampling:
            return self._take()

    def _take(self) -> Sample:
        taken = time.monotonic()
        sample = Sample(self.driver.clock.now(), self.driver.count(), taken)
        self.throughput.observe(sample.at, sample.counts)
        self._latest = sample
        return sample


def create_app(
    driver: Driver,
    *,
    token: str | None,
    read_only: bool = False,
    refresh_seconds: float = 5.0,
    sample_seconds: float = 5.0,
) -> Starlette:
    """The dashboard of ``driver``.  Without ``token`` (or with ``read_only``)
    no action is offered or accepted.  Pages refresh every ``refresh_seconds``;
    the counts they show are at most ``sample_seconds`` old."""
    guard = Guard(token, read_only=read_only)
    board = Dashboard(driver, guard, refresh_seconds, sample_seconds)
    routes = [
        Route("/", _page(board, pages.overview)),
        Route("/jobs", _page(board, pages.jobs)),
        Route("/jobs/{job_id:int}", _page(board, pages.job)),
        Route("/dlq", _page(board, pages.dlq)),
        Route("/workflows", _page(board, pages.workflows)),
        Route("/workflows/{workflow_id:int}", _page(board, pages.workflow)),
        Route("/schedules", _page(board, pages.schedules)),
        Route("/workers", _page(board, pages.workers)),
        Route("/contract", _page(board, pages.contract)),
        Route("/login", _page(board, actions.login_form)),
        Route("/login", _page(board, actions.login), methods=["POST"]),
        Route("/logout", _page(board, actions.logout), methods=["POST"]),
        Route("/actions/confirm", _page(board, actions.confirm), methods=["POST"]),
        Route("/actions/apply", _page(board, actions.apply), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_SecurityHeaders)],
        exception_handlers={HTTPException: _http_error(board)},
        lifespan=_sampling(board, sample_seconds),
    )


Handler = Callable[["Dashboard", Request], Response]


def _page(board: Dashboard, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A route of ``handler`` (run on the thread pool; a POST's form parsed first
    into ``request.state.form``); the store's refusals become pages that say why,
    any other failure a page that names its type only (never the store's URL)."""

    async def endpoint(request: Request) -> Response:
        request.state.form = await request.form() if request.method == "POST" else None
        try:
            return await run_in_threadpool(handler, board, request)
        except HTTPException as exc:
            return board.renderer.error(request, exc.status_code, exc.detail)
        except (JobNotFound, WorkflowNotFound) as exc:
            return board.renderer.error(request, 404, str(exc))
        except InvalidRequest as exc:
            return board.renderer.error(request, 400, str(exc))
        except InvalidTransition as exc:
            return board.renderer.error(request, 409, str(exc))
        except TaskHarborError as exc:
            log.warning("dashboard: %s failed: %s", request.url.path, _masked(exc))
            return board.renderer.error(request, 503, f"the store refused: {type(exc).__name__}")
        except Exception as exc:  # the store's own errors: lost connection, disk full, ...
            log.warning("dashboard: %s failed: %s", request.url.path, _masked(exc))
            return board.renderer.error(
                request, 503, f"the store failed ({type(exc).__name__}); see the dashboard's log"
            )

    return endpoint


def _masked(exc: BaseException) -> str:
    from taskharbor.cli.store import mask_secrets

    return mask_secrets(f"{type(exc).__name__}: {exc}")


def _http_error(board: Dashboard) -> Callable[[Request, Exception], Response]:
    def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return board.renderer.error(request, exc.status_code, exc.detail)

    return handle


class _SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def _sampling(board: Dashboard, every: float) -> Callable[[Any], Any]:
    """Samples the counts every ``every`` seconds on a thread while the app runs."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        stop = threading.Event()

        def run() -> None:
            while True:
                try:
                    board.sample()
                except Exception as exc:  # a store that is down now may answer later
                    log.warning("dashboard: sampling the counts failed: %s", _masked(exc))
                if stop.wait(every):
                    return

        thread = threading.Thread(target=run, name="taskharbor-dashboard-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    return lifespan
