"""``manage.py taskharbor ARGS``: the ``taskharbor`` CLI on ``settings.TASKHARBOR_APP``.

Every argument goes to the CLI as it is (``manage.py taskharbor worker
--concurrency 8``, ``manage.py taskharbor jobs list --json``); the app comes
from the settings, with Django set up, so handlers can use the ORM.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from taskharbor.cli import main

from ... import app_path


class Command(BaseCommand):
    help = "Run a taskharbor CLI command (worker, jobs, dlq, workflows, ...) on the app"

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand everything after ``manage.py taskharbor`` to the CLI, untouched."""
        arguments = argv[2:]
        if arguments[:1] in (["--help"], ["-h"], []):
            main(["--help"], prog_name=f"{argv[0]} taskharbor")
        main(["--app", app_path(), *arguments], prog_name=f"{argv[0]} taskharbor")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("arguments", nargs=argparse.REMAINDER)

    def handle(self, *args: Any, **options: Any) -> None:
        """``call_command("taskharbor", "stats")``: the same, from code."""
        main(["--app", app_path(), *args, *options["arguments"]], prog_name="taskharbor")
