"""Shared test configuration: the backend URL table that the test rig fills in."""

from __future__ import annotations

import os

import pytest

#: Backend name -> environment variable holding its URL (set by scripts/test), or a URL.
BACKENDS: dict[str, str] = {
    "memory": "memory://",
    "postgresql": "AGENTLOCKS_TEST_POSTGRES_URL",
    "redis": "AGENTLOCKS_TEST_REDIS_URL",
}


def backend_url_for(name: str) -> str:
    """Return the URL to test ``name`` on; skip (or, with CI=true, fail) if it is not up."""
    spec = BACKENDS[name]
    if "://" in spec:
        return spec
    url = os.environ.get(spec)
    if url:
        return url
    message = f"{name}: ${spec} is not set (run the suite through scripts/test)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
