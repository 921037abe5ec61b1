"""``taskharbor``: the operator's command line.

Every command reads and changes the store through the driver SPI only, so it
works the same on every store.  The store comes from the application
(``--app module:attr``) or, for operators without the application's code,
from a storage URL (``--url``).

Failures end with one line on stderr, never a traceback: exit status 2 for a
usage error (a bad option, a bad URL, an app path that does not import), 1 for
an operational one (an unknown job, a refused transition, an unreachable
store).  Passwords in storage URLs are masked in every message.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from taskharbor.spec import InvalidRequest, TaskHarborError

from .. import __version__
from .admin import demo, migrate, prune, spec, stats, worker
from .dashboard import dashboard
from .jobs import dlq, jobs
from .queues import queues
from .schedules import schedules
from .store import APP_ENV, URL_ENV, Session, StoreSource, mask_secrets
from .workers import workers
from .workflows import workflows

USAGE_ERROR = 2
OPERATIONAL_ERROR = 1


class TaskHarborGroup(click.Group):
    """The root command: turns every failure into one line on stderr and an exit status.

    It always runs standalone (it is the program's entry point): ``main``
    exits the process, and Click's test runner catches that exit.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> NoReturn:
        try:
            status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(exc.format_message() + hint, exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            _fail("interrupted", OPERATIONAL_ERROR)
        except InvalidRequest as exc:
            _fail(str(exc), USAGE_ERROR)
        except TaskHarborError as exc:
            _fail(str(exc), OPERATIONAL_ERROR)
        except Exception as exc:  # the store's own errors (connection lost, disk full, ...)
            _fail(f"{type(exc).__name__}: {exc}", OPERATIONAL_ERROR)
        sys.exit(status if isinstance(status, int) else 0)


def _fail(message: str, status: int) -> NoReturn:
    """Print ``Error: message`` as one line on stderr (passwords masked) and exit."""
    lines = [line.strip() for line in mask_secrets(message).splitlines() if line.strip()]
    click.echo(f"Error: {' '.join(lines) or 'failed'}", err=True)
    sys.exit(status)


def _store_source(ctx: click.Context, app_path: str | None, url: str | None) -> StoreSource:
    """One of ``--app`` and ``--url``: given on the command line beats set in the environment."""
    if app_path and url:
        from_line = {
            name: ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
            for name in ("app_path", "url")
        }
        if from_line["app_path"] == from_line["url"]:
            raise click.UsageError(
                "give --app or --url, not both (the app already names its store)"
            )
        if from_line["app_path"]:
            url = None
        else:
            app_path = None
    if not app_path and not url:
        return StoreSource.library_default()
    return StoreSource(app_path or None, url or None)


@click.group(
    name="taskharbor",
    cls=TaskHarborGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80},
)
@click.option(
    "--app",
    "app_path",
    envvar=APP_ENV,
    metavar="MODULE:ATTR",
    help=f"The application (a taskharbor App), e.g. myproject.jobs:app. [env: {APP_ENV}]",
)
@click.option(
    "--url",
    envvar=URL_ENV,
    metavar="URL",
    help=(
        "The store alone, for commands that run no handler code: sqlite:///path.db "
        f"or postgresql://user@host/db. [env: {URL_ENV}]"
    ),
)
@click.version_option(__version__, prog_name="taskharbor")
@click.pass_context
def main(ctx: click.Context, app_path: str | None, url: str | None) -> None:
    """Run and repair a TaskHarbor installation: workers, jobs, the dead-letter
    queue, workflows, periodic schedules, paused queues, the schema, the web dashboard.

    Give the store with --app (the application) or --url (the store alone);
    with neither, the CLI uses the store th.App() uses by default:
    taskharbor.db in the working directory (its full path is shown on stderr).
    Listings take --json for scripts; datetimes are ISO 8601 in UTC.
    """
    session = Session(_store_source(ctx, app_path, url))
    ctx.obj = session
    ctx.call_on_close(session.close)


for command in (
    worker,
    workers,
    jobs,
    dlq,
    workflows,
    schedules,
    queues,
    stats,
    migrate,
    prune,
    spec,
    demo,
    dashboard,
):
    main.add_command(command)
