"""``taskharbor dashboard``: serve the web dashboard (extra ``taskharbor[dashboard]``)."""

from __future__ import annotations

import ipaddress
import secrets

import click

from .store import Session, StoreSource, pass_session

TOKEN_ENV = "TASKHARBOR_DASHBOARD_TOKEN"


@click.command()
@click.option(
    "--url",
    metavar="URL",
    help="The store to show (instead of the --url or --app given before the command).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on; anything but loopback belongs behind a reverse proxy "
    "with TLS (docs/dashboard.md).",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8787, show_default=True, help="The port."
)
@click.option("--read-only", is_flag=True, help="Offer and accept no action: look only.")
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    metavar="TOKEN",
    help="The secret that signs an operator in to act (requeue, cancel, pause).  "
    f"[default: a random one, printed at start; env: {TOKEN_ENV}]",
)
@pass_session
def dashboard(
    session: Session, url: str | None, host: str, port: int, read_only: bool, token: str | None
) -> None:
    """Serve the web dashboard: queues, jobs, the dead-letter queue, workflows,
    schedules and the contract, refreshed live.

    Reading needs no sign-in; every action needs the token and a confirmation.
    """
    try:
        import uvicorn

        from ..dashboard import create_app
    except ImportError as exc:
        raise click.UsageError(
            f"the dashboard needs its extra: pip install 'taskharbor[dashboard]' ({exc.name} "
            "is missing)"
        ) from None
    if token is not None and not token.strip():
        raise click.BadParameter("the token must not be empty", param_hint="--token")
    if url is not None:
        session.source = StoreSource(None, url)
    driver = session.driver()
    if not read_only and token is None:
        token = secrets.token_urlsafe(24)
        click.echo(f"token (to sign in and act): {token}", err=True)
    if not _loopback(host):
        click.echo(
            f"listening on {host}: anyone who reaches it can read the store; put it behind "
            "a reverse proxy with TLS and authentication (docs/dashboard.md)",
            err=True,
        )
    click.echo(
        f"dashboard of {session.source.describe()} on http://{host}:{port}/"
        + (" (read-only)" if read_only else ""),
        err=True,
    )
    app = create_app(driver, token=None if read_only else token, read_only=read_only)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
