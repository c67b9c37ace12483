"""Fixtures of the PostgreSQL backend's adversarial tests (real server from scripts/test).

``connect``, ``coord`` and ``namespace`` are tests/conftest.py's, on the rig's PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from tests.support.coordinators import Connect as Connect
from tests.support.servers import require_env


@pytest.fixture
def pg_url() -> str:
    """The rig's PostgreSQL URL (skipped, or failed on CI, when the server is not up)."""
    return require_env("AGENTLOCKS_TEST_POSTGRES_URL")


@pytest.fixture
def backend_url(pg_url: str) -> str:
    """Coordinators of ``connect`` and ``coord`` use the rig's PostgreSQL unless given a URL."""
    return pg_url


@pytest.fixture
def app_name() -> str:
    """An application_name no other test uses, to count this test's connections."""
    return f"agentlocks-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def connect_defaults(namespace: str, app_name: str) -> dict[str, Any]:
    """``connect``'s coordinators are tagged with ``app_name``, to count their sessions."""
    return {"namespace": namespace, "application_name": app_name}


@pytest_asyncio.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection for looking at pg_locks and pg_stat_activity."""
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


async def connections_of(admin: asyncpg.Connection, app_name: str) -> int:
    """How many server sessions carry ``app_name``."""
    count: int = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app_name
    )
    return count


async def advisory_locks_of(admin: asyncpg.Connection, app_name: str) -> int:
    """How many advisory locks (held or awaited) sessions carrying ``app_name`` have."""
    count: int = await admin.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND a.application_name = $1",
        app_name,
    )
    return count


async def no_advisory_locks_soon(
    admin: asyncpg.Connection, app_name: str, within: float = 5.0
) -> None:
    """Wait until sessions carrying ``app_name`` hold no advisory lock; fail after ``within``.

    Locks and waits are gone as soon as their calls return; the local queue lengths a
    coordinator publishes for other processes (``postgres/_tickets.py``) are withdrawn in the
    background about 10 ms after the queue empties, hence the short wait.
    """
    deadline = asyncio.get_running_loop().time() + within
    while (left := await advisory_locks_of(admin, app_name)) != 0:
        assert asyncio.get_running_loop().time() < deadline, f"{left} advisory lock(s) remain"
        await asyncio.sleep(0.01)
