"""Shared test configuration: the backend URL table that the test rig fills in.

Besides the rig's single servers, two Redis deployments are started once per session, on
first use, from the same redis-server binary (``tests/support/deployments.py``): a
3-master Redis Cluster and a primary + replica + 3 sentinels. Like the rig's servers, a
deployment that cannot start skips its tests locally and fails them with ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.deployments import ClusterDeployment, DeploymentError, SentinelDeployment

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


def unavailable(message: str) -> None:
    """Skip the test (or, with CI=true, fail it): something it needs is not up."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


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
    if url:
        return url
    unavailable(f"{name}: ${spec} is not set (run the suite through scripts/test)")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterDeployment]:
    """A 3-master Redis Cluster on loopback, shared by the whole session (not broken)."""
    try:
        deployment = ClusterDeployment(tmp_path_factory.mktemp("cluster")).start()
    except DeploymentError as exc:
        unavailable(f"redis+cluster: {exc}")
        raise
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
        raise
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session")
def redis_sentinel_url(redis_sentinel: SentinelDeployment) -> str:
    """The shared sentinel group's ``redis+sentinel://`` URL."""
    return redis_sentinel.url
