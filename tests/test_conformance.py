"""The conformance suite against every driver of tests/driver_registry.py.

``driver_factory`` comes from tests/conftest.py, parametrised by ``--drivers``.
"""

from __future__ import annotations

from taskharbor.conformance import ConformanceSuite


class TestConformance(ConformanceSuite):
    """Every rule of the contract, for each selected driver."""
