"""``taskharbor workflows``: list, show and cancel workflows.

Reading is ``list_workflows``/``get_workflow`` (and ``get`` for the steps);
cancelling is the driver's ``cancel_workflow``, so the store decides,
atomically, what each step may do.
"""

from __future__ import annotations

from dataclasses import replace

import click

from taskharbor.spec import Driver, WorkflowFilter, WorkflowRecord, WorkflowState

from . import render
from .jobs import json_option, next_page_hint, page_of, paging_options
from .params import JOB_ID
from .shapes import dumps, workflow_list_shape, workflow_shape
from .store import Session, pass_session

WORKFLOW_STATE = click.Choice([state.value for state in WorkflowState], case_sensitive=False)
"""A workflow state, as ``workflows list --state`` takes it."""


@click.group()
def workflows() -> None:
    """Inspect and cancel workflows (chains, groups, chords)."""


@workflows.command("list")
@click.option(
    "--state",
    "states",
    type=WORKFLOW_STATE,
    multiple=True,
    metavar="STATE",
    help=f"Only workflows in this state (repeat for several): {', '.join(WorkflowState)}.",
)
@click.option("--name", metavar="NAME", help="Only workflows of this name.")
@paging_options("workflows")
@json_option
@pass_session
def list_workflows(
    session: Session,
    states: tuple[str, ...],
    name: str | None,
    after: int | None,
    before: int | None,
    newest_first: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List workflows by ascending id (newest first with --newest-first), a page
    at a time: id, name, state, how many steps, when created and finished."""
    where = WorkflowFilter(
        states=frozenset(WorkflowState(state) for state in states) or None,
        name=name,
        after_id=after,
        before_id=before,
        limit=limit,
        newest_first=newest_first,
    )
    found = session.driver().list_workflows(replace(where, limit=limit + 1))
    listed, next_id = page_of(found, limit)
    if as_json:
        click.echo(dumps(workflow_list_shape(listed, next_id, newest_first)))
        return
    console = render.stdout()
    if not listed:
        console.print("no workflows match")
        return
    console.print(render.workflows_table(listed))
    if (hint := next_page_hint(next_id, newest_first)) is not None:
        console.print(hint)


@workflows.command("show")
@click.argument("workflow_id", type=JOB_ID, metavar="ID")
@json_option
@pass_session
def show_workflow(session: Session, workflow_id: int, as_json: bool) -> None:
    """Show a workflow's steps as a tree, with each step's state, and its result
    once it has succeeded."""
    driver = session.driver()
    print_workflow(driver, driver.get_workflow(workflow_id), as_json)


def print_workflow(driver: Driver, workflow: WorkflowRecord, as_json: bool) -> None:
    """A workflow with its steps: a tree (with its result once succeeded), or JSON."""
    steps = driver.get(workflow.steps)
    shape = workflow_shape(workflow, steps)
    if as_json:
        click.echo(dumps(shape))
    else:
        render.stdout().print(render.workflow_tree(workflow, steps, shape["result"]))


@workflows.command("cancel")
@click.argument("workflow_id", type=JOB_ID, metavar="ID")
@json_option
@pass_session
def cancel_workflow(session: Session, workflow_id: int, as_json: bool) -> None:
    """Cancel every step of a workflow that has not finished: waiting steps at
    once, running ones are asked to stop. A succeeded workflow cannot be
    cancelled. Prints the workflow as workflows show does."""
    driver = session.driver()
    print_workflow(driver, driver.cancel_workflow(workflow_id), as_json)
