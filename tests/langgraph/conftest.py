"""LangGraph test fixtures: a saver per kind, a memory:// coordinator, fresh thread ids.

``backend_url`` (one backend per param) and ``coord`` (on it) are tests/conftest.py's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import agentlocks
from agentlocks import Coordinator
from tests.conftest import backend_url_for
from tests.langgraph._graphs import SAVERS, open_saver


@pytest_asyncio.fixture
async def memory_coord() -> AsyncIterator[Coordinator]:
    """A coordinator on memory://, for behaviour that does not depend on the backend."""
    async with agentlocks.connect("memory://") as c:
        yield c


@pytest.fixture
def thread_id() -> str:
    """A thread id no other test uses (the PostgreSQL checkpoint tables are shared)."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_url() -> str | None:
    """The rig's PostgreSQL URL, or None when it is not up."""
    return os.environ.get("AGENTLOCKS_TEST_POSTGRES_URL")


@pytest_asyncio.fixture(params=SAVERS)
async def saver(
    request: pytest.FixtureRequest, tmp_path: Path, pg_url: str | None
) -> AsyncIterator[Any]:
    """One LangGraph saver of each kind: InMemorySaver, AsyncSqliteSaver, AsyncPostgresSaver."""
    if request.param == "postgres" and pg_url is None:
        backend_url_for("postgresql")  # skips (or fails on CI) with the rig's message
    async with open_saver(request.param, tmp_path, pg_url) as s:
        yield s
