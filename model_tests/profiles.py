"""How hard the harness tries: Hypothesis settings by profile.

``TASKHARBOR_HYPOTHESIS_PROFILE`` picks the profile: ``dev`` (the default, a
quick look while editing) or ``ci`` (300 operation sequences against an
in-process store, 100 against one doing I/O).  ``ci`` is the proof
(:data:`PROOF_PROFILE`): some divergences show only after many sequences, so a
driver is covered by the model tests only once it passes ``ci``; ``make test``
runs it and says so in its header.
Drivers that talk to a database are slow by Hypothesis's standards, so their
settings also silence the ``too_slow`` health check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import HealthCheck, settings

from taskharbor.spec import InvalidRequest

PROFILE_ENV = "TASKHARBOR_HYPOTHESIS_PROFILE"


@dataclass(frozen=True, slots=True)
class Profile:
    max_examples: int
    """How many operation sequences to run."""
    steps: int
    """How many operations each sequence has at most."""
    slow_examples: int
    """How many sequences against a store that does I/O (SQL, Redis), each an order of
    magnitude slower than an in-process one."""


PROFILES = {
    "dev": Profile(max_examples=25, steps=30, slow_examples=25),
    "ci": Profile(max_examples=300, steps=30, slow_examples=100),
}


PROOF_PROFILE = "ci"
"""The profile a driver must pass to be covered: the one ``make test`` runs."""


def profile_name() -> str:
    """The profile ``TASKHARBOR_HYPOTHESIS_PROFILE`` names (default ``dev``)."""
    return os.environ.get(PROFILE_ENV, "dev")


def chosen_profile(name: str | None = None) -> Profile:
    """The profile called ``name``, or named by ``TASKHARBOR_HYPOTHESIS_PROFILE`` (default dev)."""
    if name is None:
        name = profile_name()
    if name not in PROFILES:
        raise InvalidRequest(
            f"{name!r} is not a model test profile (set {PROFILE_ENV} to one of: "
            f"{', '.join(sorted(PROFILES))})"
        )
    return PROFILES[name]


def hypothesis_settings(*, slow_store: bool = False, profile: str | None = None) -> settings:
    """Settings for :func:`hypothesis.stateful.run_state_machine_as_test`.

    ``profile`` defaults to the one named by ``TASKHARBOR_HYPOTHESIS_PROFILE``.
    ``slow_store``: the driver does I/O (SQL, Redis): it runs the profile's
    ``slow_examples`` sequences, and Hypothesis must not
    complain that generating inputs is slow compared with running them.
    """
    chosen = chosen_profile(profile)
    return settings(
        max_examples=chosen.slow_examples if slow_store else chosen.max_examples,
        stateful_step_count=chosen.steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow] if slow_store else [],
    )
