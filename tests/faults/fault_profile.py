"""Short or long: ``make test`` runs the fault suite short, ``make faults`` long.

``TASKHARBOR_FAULTS=long`` (set by ``make faults``) asks for more seeds and
more jobs; anything else, or nothing, is the short form that keeps ``make
test`` fast.
"""

from __future__ import annotations

import os

LONG = os.environ.get("TASKHARBOR_FAULTS") == "long"

SEEDS: tuple[int, ...] = (1, 2, 3) if LONG else (1,)
"""The random seeds each randomised scenario runs with."""


def scaled(short: int, long: int) -> int:
    """``long`` in the long form, else ``short``."""
    return long if LONG else short
