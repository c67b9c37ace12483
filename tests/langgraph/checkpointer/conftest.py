"""Shared LangGraph fixtures: a coordinator per backend, savers on the rig's servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import agentlocks
from agentlocks import Coordinator
from tests.conftest import backend_url_for

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
async def coord(coord_url: str) -> AsyncIterator[Coordinator]:
    """A coordinator on ``coord_url`` in a namespace no other test uses."""
    async with agentlocks.connect(coord_url, namespace=f"lg-{uuid.uuid4().hex[:12]}") as c:
        yield c


@pytest.fixture
def thread_id() -> str:
    """A thread id no other test uses (the savers' tables are shared between tests)."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_saver(tmp_path: Path) -> MakeSaver:
    """Open a saver of a kind: ``memory``, ``sqlite`` (a file in tmp_path), ``postgres``."""

    @asynccontextmanager
    async def make(kind: str) -> AsyncIterator[Any]:
        if kind == "memory":
            from langgraph.checkpoint.memory import InMemorySaver

            yield InMemorySaver()
        elif kind == "sqlite":
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "cp.sqlite")) as saver:
                yield saver
        elif kind == "postgres":
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

            url = backend_url_for("postgresql")
            async with AsyncPostgresSaver.from_conn_string(url) as saver:
                await saver.setup()
                yield saver
        else:  # pragma: no cover - a typo in a test
            raise ValueError(kind)

    return make


@pytest.fixture(params=SAVERS)
def saver_kind(request: pytest.FixtureRequest) -> str:
    """One saver kind of SAVERS (PostgreSQL skipped if its server is not up)."""
    if request.param == "postgres":
        backend_url_for("postgresql")
    return str(request.param)
