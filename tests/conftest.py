"""Shared test configuration: the backend URL table that the test rig fills in, and the
fixtures every directory uses (``backend_url``, ``namespace``, ``coord``, ``connect``).

A directory narrows ``backend_url`` to its own server (tests/redis, tests/postgres) and may
add options every coordinator of its tests gets (``connect_defaults``). The helpers behind
the fixtures live in ``tests/support/``: ``servers.py`` (the skip-locally/fail-on-CI gate,
free ports, a silent server), ``waiting.py`` (poll until N requests wait) and
``coordinators.py`` (the ``connect`` factory).

Besides the rig's single servers, two Redis deployments are started once per session, on
first use, from the same redis-server binary (``tests/support/deployments.py``): a
3-master Redis Cluster and a primary + replica + 3 sentinels. Like the rig's servers, a
deployment that cannot start skips its tests locally and fails them with ``CI=true``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

import agentlocks
from agentlocks import Coordinator
from tests.support.coordinators import Connect, coordinators
from tests.support.deployments import ClusterDeployment, DeploymentError, SentinelDeployment
from tests.support.servers import unavailable

__all__ = ["BACKENDS", "DEPLOYMENTS", "backend_url_for", "unavailable"]

#: Backend name -> environment variable holding its URL (set by scripts/test), or a URL.
BACKENDS: dict[str, str] = {
    "memory": "memory://",
    "postgresql": "AGENTLOCKS_TEST_POSTGRES_URL",
    "redis": "AGENTLOCKS_TEST_REDIS_URL",
}

#: Deployment name -> the session fixture that starts it and yields its URL.
DEPLOYMENTS: dict[str, str] = {
    "redis+cluster": "redis_cluster_url",
    "redis+sentinel": "redis_sentinel_url",
}


def backend_url_for(name: str, request: pytest.FixtureRequest | None = None) -> str:
    """Return the URL to test ``name`` on; skip (or, with CI=true, fail) if it is not up.

    A name of :data:`DEPLOYMENTS` needs ``request``: its session fixture starts it.
    """
    if name in DEPLOYMENTS:
        assert request is not None, f"{name} is started by a fixture: pass the request"
        return str(request.getfixturevalue(DEPLOYMENTS[name]))
    spec = BACKENDS[name]
    if "://" in spec:
        return spec
    url = os.environ.get(spec)
    if not url:
        unavailable(f"{name}: ${spec} is not set (run the suite through scripts/test)")
    return url


@pytest.fixture(params=sorted(BACKENDS))
def backend_url(request: pytest.FixtureRequest) -> str:
    """The URL of one backend from the table (skipped if its server is not up)."""
    return backend_url_for(request.param)


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses, so no test needs a flushed server."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def connect_defaults(namespace: str) -> dict[str, Any]:
    """Options every coordinator of ``connect`` gets unless the call overrides them."""
    return {"namespace": namespace}


@pytest_asyncio.fixture
async def connect(backend_url: str, connect_defaults: dict[str, Any]) -> AsyncIterator[Connect]:
    """Make coordinators (on ``backend_url`` unless given a URL); close them all after."""
    async with coordinators(backend_url, **connect_defaults) as make:
        yield make


@pytest_asyncio.fixture
async def coord(backend_url: str, namespace: str) -> AsyncIterator[Coordinator]:
    """A coordinator on the backend under test, in the test's own namespace."""
    async with agentlocks.connect(backend_url, namespace=namespace) as c:
        yield c


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterDeployment]:
    """A 3-master Redis Cluster on loopback, shared by the whole session (not broken)."""
    try:
        deployment = ClusterDeployment(tmp_path_factory.mktemp("cluster")).start()
    except DeploymentError as exc:
        unavailable(f"redis+cluster: {exc}")
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster: ClusterDeployment) -> str:
    """The shared cluster's ``redis+cluster://`` URL."""
    return redis_cluster.url


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelDeployment]:
    """A primary + replica + 3 sentinels on loopback, shared by the session (not broken)."""
    try:
        # Never failed over: no need to wait for the sentinels to find each other.
        sentinels = SentinelDeployment(tmp_path_factory.mktemp("sentinel"), failover_ready=False)
        deployment = sentinels.start()
    except DeploymentError as exc:
        unavailable(f"redis+sentinel: {exc}")
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session")
def redis_sentinel_url(redis_sentinel: SentinelDeployment) -> str:
    """The shared sentinel group's ``redis+sentinel://`` URL."""
    return redis_sentinel.url
