"""Checkpointer fixtures: a coordinator per backend, savers on the rig's servers.

``thread_id`` is tests/langgraph/conftest.py's; the savers are ``_graphs.open_saver``'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import agentlocks
from agentlocks import Coordinator
from tests.conftest import backend_url_for
from tests.langgraph._graphs import open_saver

pytest.importorskip("langgraph.checkpoint.base")

#: Coordinator backends, marked like the rig's own Redis and PostgreSQL tests.
COORDINATORS = [
    pytest.param("memory", id="coord-memory"),
    pytest.param("redis", id="coord-redis", marks=pytest.mark.redis),
    pytest.param("postgresql", id="coord-postgresql", marks=pytest.mark.postgres),
]

#: Checkpoint savers of the reproduction and of the fix.
SAVERS = [
    pytest.param("memory", id="InMemorySaver"),
    pytest.param("sqlite", id="AsyncSqliteSaver"),
    pytest.param("postgres", id="AsyncPostgresSaver", marks=pytest.mark.postgres),
]

MakeSaver = Callable[[str], AbstractAsyncContextManager[Any]]


@pytest.fixture(params=COORDINATORS)
def coord_url(request: pytest.FixtureRequest) -> str:
    """The URL of one coordinator backend (skipped if its server is not up)."""
    return backend_url_for(request.param)


@pytest_asyncio.fixture
async def coord(coord_url: str, namespace: str) -> AsyncIterator[Coordinator]:
    """A coordinator on ``coord_url`` in a namespace no other test uses."""
    async with agentlocks.connect(coord_url, namespace=namespace) as c:
        yield c


@pytest.fixture
def make_saver(tmp_path: Path) -> MakeSaver:
    """Open a saver of a kind: ``memory``, ``sqlite`` (a file in tmp_path), ``postgres``."""

    def make(kind: str) -> AbstractAsyncContextManager[Any]:
        pg_url = backend_url_for("postgresql") if kind == "postgres" else None
        return open_saver(kind, tmp_path, pg_url)

    return make


@pytest.fixture(params=SAVERS)
def saver_kind(request: pytest.FixtureRequest) -> str:
    """One saver kind of SAVERS (PostgreSQL skipped if its server is not up)."""
    if request.param == "postgres":
        backend_url_for("postgresql")
    return str(request.param)
