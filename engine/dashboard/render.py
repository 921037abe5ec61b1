"""Templates: Jinja2 with autoescaping on, so every value from the store is escaped."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from taskharbor.spec import JobState

from ..jobs import progress_label
from .security import SESSION_COOKIE, Guard

FRAGMENT_HEADER = "x-fragment"
"""Sent by the live refresh: the page's main part only, without the frame."""


class Renderer:
    def __init__(self, folder: Path, guard: Guard, refresh_seconds: float) -> None:
        self.guard = guard
        self.refresh_seconds = refresh_seconds
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(folder),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            when=when, age=age, pretty=pretty, query=urlencode, progress=progress_label
        )
        self.env.globals.update(states=list(JobState))

    def session(self, request: Request) -> str | None:
        """The request's session nonce when it carries a valid one."""
        return self.guard.session(request.cookies.get(SESSION_COOKIE))

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        session = self.session(request)
        context = {
            "path": request.url.path,
            "read_only": self.guard.read_only,
            "signed_in": session is not None,
            "can_act": session is not None and not self.guard.read_only,
            "csrf": self.guard.csrf_token(session) if session else "",
            "refresh": self.refresh_seconds,
            "fragment": request.headers.get(FRAGMENT_HEADER) == "1",
            "live": request.method == "GET",
            **values,
        }
        html = self.env.get_template(name).render(context)
        return HTMLResponse(html, status_code=status, headers={"vary": FRAGMENT_HEADER})

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status, code=status, message=message, live=False)


def when(at: datetime | None) -> str:
    """An instant as the pages show it: UTC, to the second."""
    return "" if at is None else at.strftime("%Y-%m-%d %H:%M:%S UTC")


def age(span: timedelta | None) -> str:
    """A duration in its largest sensible unit: 42 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    if span is None:
        return "—"
    seconds = int(span.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def pretty(value: object) -> str:
    """A JSON value, indented (escaped by the template like any other text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
