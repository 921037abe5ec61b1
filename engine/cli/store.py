"""Where the CLI finds its store: an application (``--app``) or a storage URL (``--url``).

``--app module:attr`` imports the operator's application and uses its driver;
``--url`` opens the store alone, for operators who do not have the
application's code.  Storage URLs may carry a password: :func:`mask_secrets`
removes it from every message the CLI prints.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

import click

from taskharbor.spec import Driver, InvalidRequest, TaskHarborError

from ..app import App
from ..urls import DEFAULT_URL, open_driver

SQLITE_PREFIX = "sqlite:///"
APP_ENV = "TASKHARBOR_APP"
URL_ENV = "TASKHARBOR_URL"

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^@/\s]*(?=@)")
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL (``user:secret@``) or conninfo
    (``password=secret``) in it replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    return _KEYWORD_PASSWORD.sub(r"\g<head>***", text)


class StoreUnavailable(click.ClickException):
    """The store could not be opened: unreachable, unreadable, or refused (exit 1)."""


@dataclass(frozen=True)
class StoreSource:
    """The ``--app`` / ``--url`` the operator gave (at most one of them is set).

    With neither, the URL is the library's default store (``th.App()`` opens
    ``./taskharbor.db``), made absolute, and ``default`` is set.
    """

    app_path: str | None
    url: str | None
    default: bool = False

    @classmethod
    def library_default(cls) -> StoreSource:
        """The store ``th.App()`` opens in the working directory, by its absolute path."""
        relative = DEFAULT_URL.removeprefix(SQLITE_PREFIX)
        return cls(None, SQLITE_PREFIX + os.path.abspath(relative), default=True)

    def default_path(self) -> str | None:
        """The file of the default store, or None when the operator named a store."""
        return self.url.removeprefix(SQLITE_PREFIX) if self.default and self.url else None

    def describe(self) -> str:
        """The source for messages, with any password masked."""
        if self.app_path is not None:
            return f"app {self.app_path}"
        return f"store {mask_secrets(self.url or '')}"

    def load_app(self, command: str) -> App:
        """The application; a usage error when only a URL (or nothing) was given."""
        if self.app_path is None:
            raise click.UsageError(
                f"{command} needs the application's code: give --app module:attr (or set {APP_ENV})"
            )
        return load_app(self.app_path)

    def open_driver(self) -> Driver:
        """The store's driver, from the app or the URL."""
        if self.app_path is not None:
            return load_app(self.app_path).driver
        assert self.url is not None, "a source without an app has a URL (the default one)"
        if (path := self.default_path()) is not None:
            click.echo(
                f"store: {path} (the default, as th.App(); give --app or --url for another)",
                err=True,
            )
        if urlsplit(self.url).scheme.lower() == "memory":
            raise click.BadParameter(
                "a memory:// store lives inside one process, so the CLI would see an empty "
                "one: give --app module:attr to reach an app's memory store",
                param_hint="--url",
            )
        # The driver parses its own URL (a PostgreSQL URL's ?schema= included)
        # and fails fast on an unreachable server, naming host and port only.
        try:
            return open_driver(self.url)
        except InvalidRequest as exc:
            raise click.BadParameter(mask_secrets(str(exc)), param_hint="--url") from None
        except Exception as exc:  # any failure to reach or read the store is reported as such
            raise StoreUnavailable(
                f"cannot open {self.describe()}: {mask_secrets(_one_line(exc))}"
            ) from None


class Session:
    """The store one invocation works on, opened when a command first needs it."""

    def __init__(self, source: StoreSource) -> None:
        self.source = source
        self._driver: Driver | None = None
        self._owns_driver = False

    def driver(self) -> Driver:
        """The store's driver (opened once; a URL's store is closed when the command ends)."""
        if self._driver is None:
            self._driver = self.source.open_driver()
            self._owns_driver = self.source.app_path is None
        return self._driver

    def app(self, command: str) -> App:
        """The application, for commands that run handler code."""
        return self.source.load_app(command)

    def close(self) -> None:
        """Close a store this session opened from a URL (an app's store stays the app's)."""
        if self._driver is not None and self._owns_driver:
            self._driver.close()


pass_session = click.make_pass_decorator(Session)
"""Gives a command the invocation's :class:`Session`."""


def load_app(path: str) -> App:
    """Import ``module:attr`` (``attr`` may be dotted) and return the App it names.

    The working directory is importable, as it is for ``python -m``.
    """
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise click.BadParameter(
            f"{path!r} is not of the form module:attr (e.g. myproject.jobs:app)",
            param_hint="--app",
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise click.BadParameter(
                f"cannot import {path!r}: no module named {exc.name!r}", param_hint="--app"
            ) from None
        raise StoreUnavailable(f"importing {path!r} failed: {_one_line(exc)}") from None
    except Exception as exc:  # the app's own module raised while importing
        raise StoreUnavailable(
            f"importing {path!r} failed: {mask_secrets(_one_line(exc))}"
        ) from None
    for name in attr_path.split("."):
        if not hasattr(target, name):
            raise click.BadParameter(
                f"{path!r}: {module_name} has no attribute {attr_path!r}", param_hint="--app"
            )
        target = getattr(target, name)
    if not isinstance(target, App):
        raise click.BadParameter(
            f"{path!r} is a {type(target).__name__}, not a taskharbor App", param_hint="--app"
        )
    return target


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (our own
    errors speak for themselves: their message alone)."""
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else ""
    if message and isinstance(exc, TaskHarborError):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
