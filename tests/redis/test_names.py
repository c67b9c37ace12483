"""Redis name records: what lets `agentlocks inspect` list locks by name, and only ours."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

import agentlocks
from agentlocks.backends.redis._names import acquire_keys, parse_record


async def test_name_record_expires_by_itself(redis_url: str) -> None:
    """A lock's name record carries a TTL of at most 10 minutes: no state lasts."""
    namespace = f"names-{uuid.uuid4().hex[:8]}"
    async with (
        agentlocks.connect(redis_url, namespace=namespace) as coord,
        coord.acquire("thread:1"),
    ):
        pass
    keys, record = acquire_keys(namespace, "l:thread:1")
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.get(keys[4]) == record
        assert 0 < await client.pttl(keys[4]) <= 600_000
    finally:
        await client.aclose()


async def test_stray_keys_matching_the_pattern_are_ignored(redis_url: str) -> None:
    """A key shaped like a name record but not hashing to its own tag is not listed."""
    namespace = f"names-{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(redis_url)
    forged = f"{len(namespace)}:{namespace}:l:forged".encode()
    try:
        await client.set(b"agentlocks:{0123}:n", forged, px=60_000)
        async with agentlocks.connect(redis_url, namespace=namespace) as coord:
            assert await coord.backend.keys("") == []
            async with coord.acquire("real"):
                assert await coord.backend.keys("") == ["l:real"]
    finally:
        await client.delete(b"agentlocks:{0123}:n")
        await client.aclose()
    assert parse_record(b"agentlocks:{0123}:n", forged) is None
