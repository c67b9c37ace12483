"""Redis Cluster and Sentinel: URLs, clients, key spread, scripts, sharded hand-off, WAIT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

import agentlocks
from agentlocks import BackendError, ConfigError
from tests.support.deployments import ClusterDeployment, SentinelDeployment
from tests.support.waiting import until_waiting

from .conftest import Connect, Server, start

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://",
        "redis+cluster://h1:70000",
        "redis+cluster://h1:7000,,h2:7001",
        "redis+cluster://h1:7000,h2:x",
        "redis+cluster://h1:7000/3",
        "redis+sentinel://h1:26379",
        "redis+sentinel://h1:26379/svc/db",
        "redis+sentinel://h1:26379/svc/0/extra",
        f"redis://u:{SECRET}@h1/0?sentinel_password={SECRET}",
        f"redis+cluster://u:{SECRET}@h1:7000?sentinel_username=x",
        f"redis+sentinel://u:{SECRET}@h1:26379/svc?min_replicas=-1",
        f"redis+sentinel://:{SECRET}@h1:26379/svc?sentinel_password={SECRET}&min_replicas=x",
    ],
)
def test_malformed_deployment_urls_are_one_config_error_without_a_password(url: str) -> None:
    """Each malformed cluster/sentinel URL is a ConfigError at connect(); no password shown."""
    with pytest.raises(ConfigError) as caught:
        agentlocks.connect(url)
    assert SECRET not in str(caught.value)


def test_sentinel_password_never_in_a_repr() -> None:
    """sentinel_password (query) and the URL password are masked in the coordinator's repr."""
    coord = agentlocks.connect(
        f"redis+sentinel://u:{SECRET}@h1:26379,h2:26379/svc/2?sentinel_password={SECRET}"
    )
    assert SECRET not in repr(coord) and SECRET not in repr(coord._settings)
    assert "sentinel_password=***" in repr(coord)


async def test_a_cluster_client_needs_a_cluster_url(redis_cluster: ClusterDeployment) -> None:
    """RedisCluster + redis://, Redis + redis+cluster://: ConfigError; RedisCluster alone works."""
    cluster = RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    plain = aioredis.Redis(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        with pytest.raises(ConfigError, match="RedisCluster"):
            agentlocks.connect("redis://127.0.0.1:6379", redis=cluster)
        with pytest.raises(ConfigError, match="RedisCluster"):
            agentlocks.connect("redis+cluster://127.0.0.1:7000", redis=plain)
        async with agentlocks.connect(redis=cluster, namespace="borrowed") as coord:
            assert "redis+cluster://" in repr(coord)
            async with coord.acquire("borrowed"):
                assert (await coord.inspect("borrowed")).holders
        assert await cluster.ping()  # borrowed, not closed
    finally:
        await cluster.aclose()
        await plain.aclose()


async def test_unknown_sentinel_service_is_a_backend_error_without_a_password(
    redis_sentinel: SentinelDeployment,
) -> None:
    """Unknown service (and a refused sentinel password): BackendError at once, no password."""
    hosts = redis_sentinel.url.split("//")[1].split("/")[0]
    url = f"redis+sentinel://u:{SECRET}@{hosts}/nosuchservice?sentinel_password={SECRET}"
    async with agentlocks.connect(url, connect_timeout=2) as coord:
        began = time.monotonic()
        with pytest.raises(BackendError, match="nosuchservice") as caught:
            await coord.acquire("k", timeout=5)
        assert time.monotonic() - began < 2  # each sentinel asked once, no backoff
    text = f"{caught.value} {caught.value!r} {caught.value.__cause__!r}"
    assert SECRET not in text


async def test_a_cluster_url_on_a_single_server_is_a_backend_error(redis_url: str) -> None:
    """redis+cluster:// pointing at a non-cluster server fails loudly, not silently."""
    url = redis_url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0]
    async with agentlocks.connect(url, connect_timeout=2) as coord:
        with pytest.raises(BackendError):
            await coord.acquire("k", timeout=5)


async def flush_scripts(cluster: ClusterDeployment) -> None:
    """SCRIPT FLUSH on every master of ``cluster``."""
    for port in cluster.master_ports():
        node = aioredis.Redis(host="127.0.0.1", port=port)
        await node.script_flush()
        await node.aclose()


async def test_resources_spread_over_every_master(
    redis_cluster: ClusterDeployment, connect: Connect
) -> None:
    """60 locks of one namespace held at once have keys on all 3 masters (never one slot)."""
    coord = connect(redis_cluster.url)
    leases = [await coord.acquire(f"r{i}") for i in range(60)]
    per_master = {}
    for port in redis_cluster.master_ports():
        node = aioredis.Redis(host="127.0.0.1", port=port)
        keys = [k async for k in node.scan_iter(match="agentlocks:*", count=1000)]
        mine = {lease._grant.handle.keys[0] for lease in leases}  # type: ignore[attr-defined]
        per_master[port] = len(mine & set(keys))
        await node.aclose()
    for lease in leases:
        await lease.release()
    assert len(per_master) == 3 and all(n > 0 for n in per_master.values()), per_master
    assert sum(per_master.values()) == 60


async def test_noscript_after_a_script_flush_is_answered_by_reloading(
    redis_cluster: ClusterDeployment, connect: Connect
) -> None:
    """SCRIPT FLUSH on every master (as Redis 7.4+ eviction would): locks keep working."""
    coord = connect(redis_cluster.url)
    async with coord.acquire("flush") as lease:
        await flush_scripts(redis_cluster)
        waiter = start(coord.acquire("flush", timeout=10))  # acquire.lua: NOSCRIPT
        await asyncio.sleep(0.05)
        await flush_scripts(redis_cluster)
        await lease.verify()  # verify.lua: NOSCRIPT, reloaded
    second = await asyncio.wait_for(waiter, 10)  # release.lua reloaded, hand-off done
    assert second.token > lease.token
    await flush_scripts(redis_cluster)
    await second.release()


async def test_hand_off_is_not_broadcast_to_every_node(
    redis_cluster: ClusterDeployment, connect: Connect
) -> None:
    """A cluster hand-off publishes on a shard channel only: classic subscribers hear nothing."""
    listeners = []
    for node in redis_cluster.nodes:
        client = aioredis.Redis(host="127.0.0.1", port=node.port)
        pubsub = client.pubsub()
        await pubsub.psubscribe("agentlocks:*")
        await pubsub.get_message(timeout=1)  # the psubscribe confirmation
        listeners.append((client, pubsub))
    try:
        holder, waiter_coord = connect(redis_cluster.url), connect(redis_cluster.url)
        lease = await holder.acquire("sharded")
        waiter = start(waiter_coord.acquire("sharded", timeout=10))
        await until_waiting(holder, "sharded", 1)
        await lease.release()
        second = await asyncio.wait_for(waiter, 10)
        await second.release()
        heard = [await p.get_message(timeout=0.2) for _, p in listeners]
        assert heard == [None] * len(listeners)
    finally:
        for client, pubsub in listeners:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            await client.aclose()


async def test_min_replicas_waits_for_the_replica(
    redis_sentinel: SentinelDeployment, connect: Connect
) -> None:
    """min_replicas=1 grants and hands off on a 1-replica group; 2 fails loudly, leaves no lock."""
    durable = connect(redis_sentinel.url, min_replicas=1)
    lease = await durable.acquire("durable")
    waiter = start(durable.acquire("durable", timeout=10))
    await until_waiting(durable, "durable", 1)
    await lease.release()
    second = await asyncio.wait_for(waiter, 10)
    assert second.token > lease.token
    await second.release()
    # WAIT gets 0.8 x socket_timeout: leave the rest of the bound for a loaded machine.
    impossible = connect(redis_sentinel.url, min_replicas=2, socket_timeout=2)
    with pytest.raises(BackendError, match="min_replicas=2"):
        await impossible.acquire("durable")
    assert (await durable.inspect("durable")).holders == ()


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru", "noeviction"])
async def test_an_evicting_maxmemory_policy_is_warned_about_at_connect(
    server: Server, connect: Connect, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    """volatile-*/allkeys-* can evict a held lock's keys: one warning on first use; none else."""
    admin = aioredis.Redis.from_url(server.url)
    await admin.config_set("maxmemory-policy", policy)
    await admin.aclose()
    with caplog.at_level(logging.WARNING, logger="agentlocks"):
        async with connect(server.url).acquire("evictable"):
            await asyncio.sleep(0.1)  # the check runs beside the first call
    warned = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warned) == (0 if policy == "noeviction" else 1), warned
