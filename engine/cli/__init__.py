"""``taskharbor``: the operator's command line, one module per command group.

:mod:`.main` is the root command; :mod:`.jobs` (jobs, dlq), :mod:`.workflows`,
:mod:`.schedules` and :mod:`.admin` (worker, stats, migrate, prune, spec, demo)
hold the groups;
:mod:`.store` opens the store, :mod:`.params`, :mod:`.shapes`, :mod:`.render`
and :mod:`.bulk` are the helpers they share.
"""

from .main import main

__all__ = ["main"]
