"""The conformance suite (agentlocks.testing) on every backend in the table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from agentlocks import Coordinator, Lease
from agentlocks.testing import ConformanceSuite
from tests.conftest import BACKENDS, DEPLOYMENTS, backend_url_for
from tests.support.deployments import admin_client


async def _break_postgresql(coord: Coordinator, lease: Lease) -> None:
    """Terminate the server session holding the lease, as an administrator or a crash would."""
    import asyncpg

    pid = coord.backend.backend_pid(lease._grant)  # type: ignore[attr-defined]
    assert pid is not None, "the lease is not held on a live session"
    conn = await asyncpg.connect(coord._settings.url)
    try:
        # The timeout makes the call wait until the backend is gone (PostgreSQL >= 14).
        assert await conn.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)
    finally:
        await conn.close()


async def _break_redis(coord: Coordinator, lease: Lease) -> None:
    """Delete the grant's holder record on the server, as an expired lease would be."""
    handle = lease._grant.handle
    client = admin_client(coord._settings.url)
    try:
        assert await client.zrem(handle.keys[0], handle.member) == 1  # type: ignore[attr-defined]
    finally:
        await client.aclose()


#: URL scheme -> how to make a lease's grant vanish on that backend's server.
BREAKERS: dict[str, Callable[[Coordinator, Lease], Awaitable[None]]] = {
    "postgresql": _break_postgresql,
    "postgres": _break_postgresql,
    "redis": _break_redis,
    "rediss": _break_redis,
    "redis+cluster": _break_redis,
    "redis+sentinel": _break_redis,
}


class TestConformance(ConformanceSuite):
    """Every guarantee of API.md, on each backend of tests/conftest.py's BACKENDS table."""

    @pytest.fixture(params=sorted(BACKENDS) + sorted(DEPLOYMENTS))
    def backend_url(self, request: pytest.FixtureRequest) -> str:
        """The URL of one backend or deployment (skipped if its server is not up)."""
        return backend_url_for(request.param, request)

    async def break_lease(self, coord: Coordinator, lease: Lease) -> None:
        """Break the lease with the breaker of the coordinator's URL scheme, if there is one."""
        breaker = BREAKERS.get(coord._settings.scheme)
        if breaker is None:
            await super().break_lease(coord, lease)
            return
        await breaker(coord, lease)
