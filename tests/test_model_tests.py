"""The stateful harness: every driver against the reference model.

``test_driver_matches_the_model`` runs the harness against each driver (the
``driver_factory`` fixture).  The other tests prove the harness bites: each
runs it against a ReferenceModel subclass with one deliberate bug and
asserts that Hypothesis finds a divergence.
"""

from __future__ import annotations

from hypothesis.stateful import run_state_machine_as_test

from driver_registry import DriverFactory
from taskharbor.model_tests import driver_state_machine, hypothesis_settings


def test_driver_matches_the_model(driver_name: str, driver_factory: DriverFactory) -> None:
    machine = driver_state_machine(driver_factory)
    slow = driver_name in ("sqlite", "postgres")
    run_state_machine_as_test(machine, settings=hypothesis_settings(slow_store=slow))
