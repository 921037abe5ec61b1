"""Signing in and the actions: requeue or cancel jobs, pause or resume schedules and queues.

Every action is a POST from a signed-in session carrying its CSRF token (and no
foreign ``Origin``); job actions go through a confirmation page that lists what
will change and what cannot (a state the contract does not allow it from).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from taskharbor.spec import Driver, InvalidRequest, JobRecord
from taskharbor.spec.table import JOB

from .security import SESSION_COOKIE, same_origin

if TYPE_CHECKING:
    from .app import Dashboard

JOB_ACTIONS = {"requeue": "Requeue", "cancel": "Cancel"}
NAMED_ACTIONS: dict[str, Callable[[Driver, list[str]], object]] = {
    "pause": lambda driver, names: driver.pause_schedules(names, True),
    "resume": lambda driver, names: driver.pause_schedules(names, False),
    "pause_queue": lambda driver, names: driver.pause_queues(names, True),
    "resume_queue": lambda driver, names: driver.pause_queues(names, False),
}
"""The actions on schedules and queues, by name (no confirmation: each undoes the other)."""
MAX_SELECTED = 500


def login_form(board: Dashboard, request: Request) -> Response:
    return board.renderer.render(
        request, "login.html", next=_local(request.query_params.get("next")), live=False
    )


def login(board: Dashboard, request: Request) -> Response:
    form = _form(request)
    if not same_origin(request.headers.get("origin"), request.headers.get("host")):
        return board.renderer.error(request, 403, "cross-site request refused")
    if board.guard.read_only:
        return board.renderer.error(request, 403, "this dashboard is read-only")
    if not board.guard.check_token(str(form.get("token", ""))):
        return board.renderer.render(
            request, "login.html", 403, next=_local(str(form.get("next", ""))), failed=True
        )
    response = RedirectResponse(_local(str(form.get("next", ""))), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        board.guard.new_session(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def logout(board: Dashboard, request: Request) -> Response:
    _authorise(board, request)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


def confirm(board: Dashboard, request: Request) -> Response:
    """The confirmation page of a job action: what it will change, what it cannot."""
    form = _authorise(board, request)
    action, records = _job_action(board, form)
    ready = [r for r in records if JOB.allows(action, r.state)]
    return board.renderer.render(
        request,
        "confirm.html",
        action=action,
        verb=JOB_ACTIONS[action],
        ready=ready,
        refused=[r for r in records if r not in ready],
        back=_local(str(form.get("back", ""))),
    )


def apply(board: Dashboard, request: Request) -> Response:
    """Apply a confirmed job action (to the jobs whose state still allows it, in one
    SPI call), or pause or resume schedules."""
    form = _authorise(board, request)
    back = _local(str(form.get("back", "")))
    action = str(form.get("action", ""))
    if action in NAMED_ACTIONS:
        names = [str(name) for name in form.getlist("names")]
        if not names:
            raise InvalidRequest("nothing selected: name a schedule or queue")
        NAMED_ACTIONS[action](board.driver, names)
        return RedirectResponse(back, status_code=303)
    action, records = _job_action(board, form)
    ready = [r.id for r in records if JOB.allows(action, r.state)]
    done = []
    if ready:
        call = board.driver.requeue if action == "requeue" else board.driver.cancel
        done = call(ready)
    return board.renderer.render(
        request,
        "done.html",
        verb=JOB_ACTIONS[action],
        done=done,
        skipped=[r for r in records if r.id not in ready],
        back=back,
    )


def _job_action(board: Dashboard, form: FormData) -> tuple[str, list[JobRecord]]:
    action = str(form.get("action", ""))
    if action not in JOB_ACTIONS:
        raise InvalidRequest(f"unknown action {action!r}")
    raw = [str(value) for value in form.getlist("ids")]
    if not raw:
        raise InvalidRequest("no job selected: tick the jobs to " + action)
    if len(raw) > MAX_SELECTED or not all(value.isdigit() for value in raw):
        raise InvalidRequest(f"select at most {MAX_SELECTED} jobs by id")
    ids = list(dict.fromkeys(int(value) for value in raw))
    return action, board.driver.get(ids)


def _authorise(board: Dashboard, request: Request) -> FormData:
    """The form of an action from a signed-in session with its CSRF token, or a 403."""
    form = _form(request)
    if board.guard.read_only:
        raise HTTPException(403, "this dashboard is read-only: it takes no actions")
    if not same_origin(request.headers.get("origin"), request.headers.get("host")):
        raise HTTPException(403, "cross-site request refused")
    session = board.renderer.session(request)
    if session is None:
        raise HTTPException(403, "sign in with the dashboard's token first")
    if not board.guard.check_csrf(session, str(form.get("csrf", ""))):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")
    return form


def _form(request: Request) -> FormData:
    form = request.state.form
    assert isinstance(form, FormData), "actions are POSTs"
    return form


def _local(target: str | None) -> str:
    """A path on this site to go back to (anything else becomes the overview)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
