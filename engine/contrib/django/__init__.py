"""Django (``pip install 'taskharbor[django]'``): settings, an app, ``manage.py taskharbor``.

Add ``"taskharbor.contrib.django"`` to ``INSTALLED_APPS`` and name your
TaskHarbor app in settings: ``TASKHARBOR_APP = "shop.tasks:app"`` (a module
and the ``th.App`` in it).  Then:

* ``manage.py taskharbor worker`` and every other command of the
  ``taskharbor`` CLI (``jobs list``, ``dlq requeue``, ``workflows show``, ...)
  run on that app, with Django set up (models importable in handlers);
* ``enqueue(target, ...)`` (and ``enqueue_many``) enqueue on Django's own
  database connection, so inside ``transaction.atomic()`` the jobs and
  workflows exist if and only if that block commits; ``get_app()`` is the
  app itself.

Django's connection must be PostgreSQL on psycopg 3 (``ENGINE
"django.db.backends.postgresql"`` with psycopg installed) or SQLite on the
store's own file.  See docs/integrations.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import missing

try:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connections
except ImportError as error:  # pragma: no cover - the message is what is tested
    raise missing("Django", "django", __name__) from error

from ...app import App
from ...canvas import Signature, Workflow, WorkflowHandle
from ...jobs import Job

SETTING = "TASKHARBOR_APP"
"""The setting naming the app, as ``module:attribute``."""


def app_path() -> str:
    """The ``module:attribute`` of the app, from ``settings.TASKHARBOR_APP``."""
    path = getattr(settings, SETTING, None)
    if not isinstance(path, str) or ":" not in path:
        raise ImproperlyConfigured(
            f"settings.{SETTING} must name the TaskHarbor app as 'module:attribute' "
            f"(for instance 'shop.tasks:app'), not {path!r}"
        )
    return path


def get_app() -> App:
    """The TaskHarbor app ``settings.TASKHARBOR_APP`` names (imported once)."""
    from ...cli.store import load_app

    return load_app(app_path())


def connection(using: str = "default") -> Any:
    """The client library's connection under Django's connection ``using``, in its
    current transaction (``transaction.atomic()``)."""
    django_connection = connections[using]
    django_connection.ensure_connection()
    return django_connection.connection


def enqueue(
    target: Signature | Workflow, *, using: str = "default", **options: Any
) -> Job | WorkflowHandle:
    """``get_app().enqueue(target, ...)`` on Django's connection ``using``: inside
    ``transaction.atomic()``, the job or workflow commits or rolls back with it."""
    return get_app().enqueue(target, connection=connection(using), **options)


def enqueue_many(signatures: Iterable[Signature], *, using: str = "default") -> list[Job]:
    """``get_app().enqueue_many(...)`` on Django's connection ``using``."""
    return get_app().enqueue_many(signatures, connection=connection(using))


__all__ = ["SETTING", "app_path", "connection", "enqueue", "enqueue_many", "get_app"]
