"""The conformance suite (agentlocks.testing) on every backend in the table."""

from __future__ import annotations

import pytest

from agentlocks.testing import ConformanceSuite
from tests.conftest import BACKENDS, backend_url_for


class TestConformance(ConformanceSuite):
    """Every guarantee of API.md, on each backend of tests/conftest.py's BACKENDS table."""

    @pytest.fixture(params=sorted(BACKENDS))
    def backend_url(self, request: pytest.FixtureRequest) -> str:
        """The URL of one backend from the table (skipped if its server is not up)."""
        return backend_url_for(request.param)
