"""The backends' head records (``HeadStore``): compare, fence, expire, drop; on every backend."""

from __future__ import annotations

import asyncio

import pytest

from agentlocks import Coordinator
from agentlocks.backends import HeadStore, HeadSwap

R = "l:langgraph:thread-1"


def _store(coord: Coordinator) -> HeadStore:
    backend = coord.backend
    assert isinstance(backend, HeadStore)
    return backend


async def test_swap_compares_the_head(coord: Coordinator) -> None:
    """A swap expecting the current head moves it; one expecting another head changes nothing."""
    store = _store(coord)
    assert await store.swap_head(R, "", "", "a", None, 60) == HeadSwap("swapped", "", None)
    assert await store.swap_head(R, "", "a", "b", None, 60) == HeadSwap("swapped", "a", None)
    assert await store.swap_head(R, "", "a", "c", None, 60) == HeadSwap("conflict", "b", None)
    assert await store.swap_head(R, "", "", "c", None, 60) == HeadSwap("conflict", "b", None)
    assert await store.swap_head(R, "", None, "d", None, 60) == HeadSwap("swapped", "b", None)
    # Fields and resources are separate records.
    assert await store.swap_head(R, "sub:1", "x", "y", None, 60) == HeadSwap("swapped", "", None)
    assert await store.swap_head(R + "2", "", "", "z", None, 60) == HeadSwap("swapped", "", None)


async def test_swap_reports_the_age_of_the_record(coord: Coordinator) -> None:
    """A swap reports how long the record stood still (None when it was absent)."""
    store = _store(coord)
    assert (await store.swap_head(R, "", None, "a", None, 60)).age is None
    await asyncio.sleep(0.2)
    conflict = await store.swap_head(R, "", "x", "b", None, 60)
    assert conflict.outcome == "conflict" and conflict.age is not None
    assert 0.15 <= conflict.age < 5
    swapped = await store.swap_head(R, "", "a", "b", None, 60)
    assert swapped.age is not None and swapped.age >= 0.15
    assert (await store.swap_head(R, "", "b", "c", None, 60)).age < 0.15  # type: ignore[operator]


async def test_swap_fences_lower_tokens(coord: Coordinator) -> None:
    """A swap with a token below the record's is fenced; equal, higher or no token passes."""
    store = _store(coord)
    assert (await store.swap_head(R, "", None, "a", 10, 60)).outcome == "swapped"
    assert await store.swap_head(R, "", "a", "b", 9, 60) == HeadSwap("fenced", "a", 10)
    assert await store.swap_head(R, "", "a", "b", 10, 60) == HeadSwap("swapped", "a", 10)
    assert await store.swap_head(R, "", "b", "c", None, 60) == HeadSwap("swapped", "b", 10)
    assert await store.swap_head(R, "", "c", "d", 12, 60) == HeadSwap("swapped", "c", 10)
    # A fenced swap is judged before the head: even a matching expectation is refused.
    assert await store.swap_head(R, "", "d", "e", 11, 60) == HeadSwap("fenced", "d", 12)
    # Removing the head ("") keeps the fence.
    assert await store.swap_head(R, "", "d", "", 12, 60) == HeadSwap("swapped", "d", 12)
    assert await store.swap_head(R, "", "", "f", 11, 60) == HeadSwap("fenced", "", 12)
    assert await store.swap_head(R, "", "", "f", 13, 60) == HeadSwap("swapped", "", 12)


async def test_records_expire_and_drop(coord: Coordinator) -> None:
    """An expired record is absent (fence included); drop_heads removes every field."""
    store = _store(coord)
    await store.swap_head(R, "", None, "a", 50, 0.2)
    await store.swap_head(R, "sub", None, "s", None, 60)
    await asyncio.sleep(0.4)
    assert await store.swap_head(R, "", "", "b", 1, 60) == HeadSwap("swapped", "", None)
    await store.drop_heads(R)
    assert await store.swap_head(R, "sub", "", "t", None, 60) == HeadSwap("swapped", "", None)
    assert await store.swap_head(R, "", "", "c", None, 60) == HeadSwap("swapped", "", None)


async def test_concurrent_swaps_from_one_head_admit_one(coord: Coordinator) -> None:
    """Twenty swaps expecting the same head at once: exactly one wins, the rest see it."""
    store = _store(coord)
    await store.swap_head(R, "", None, "root", None, 60)
    results = await asyncio.gather(
        *(store.swap_head(R, "", "root", f"child-{i}", None, 60) for i in range(20))
    )
    won = [i for i, r in enumerate(results) if r.outcome == "swapped"]
    assert len(won) == 1
    assert {r.head for r in results if r.outcome == "conflict"} == {f"child-{won[0]}"}


@pytest.mark.parametrize("coord_url", ["memory://"])
async def test_memory_records_are_swept(coord: Coordinator) -> None:
    """memory:// keeps no record past its expiry once another swap comes (bounded state)."""
    table = coord.backend._heads  # type: ignore[attr-defined]
    store = _store(coord)
    for i in range(50):
        await store.swap_head(f"l:t{i}", "", None, "a", None, 0.05)
    assert len(table) == 50
    await asyncio.sleep(0.1)
    await store.swap_head("l:other", "", None, "a", None, 60)
    assert len(table) == 1


@pytest.mark.redis
async def test_redis_records_carry_a_ttl_and_vanish() -> None:
    """On Redis both keys of a resource's heads expire by themselves (bounded state)."""
    import redis.asyncio as aioredis

    import agentlocks
    from agentlocks.backends.redis._scripts import head_keys
    from tests.conftest import backend_url_for

    url = backend_url_for("redis")
    async with agentlocks.connect(url, namespace="heads-ttl-test") as coord:
        await _store(coord).swap_head(R, "", None, "a", 7, 0.3)
        client = aioredis.Redis.from_url(url)
        try:
            keys = head_keys("heads-ttl-test", R)
            ttls = [await client.pttl(key) for key in keys]
            assert all(0 < ttl <= 300 for ttl in ttls), ttls
            await asyncio.sleep(0.5)
            assert await client.exists(*keys) == 0
        finally:
            await client.aclose()


@pytest.mark.postgres
async def test_postgres_sweeps_expired_rows() -> None:
    """On PostgreSQL expired head rows are deleted by the periodic sweep (bounded state)."""
    import asyncpg

    import agentlocks
    from tests.conftest import backend_url_for

    url = backend_url_for("postgresql")
    namespace = "heads-sweep-test"
    async with agentlocks.connect(url, namespace=namespace) as coord:
        store = _store(coord)
        for i in range(5):
            await store.swap_head(f"l:t{i}", "", None, "a", None, 0.05)
        await asyncio.sleep(0.2)
        coord.backend._heads._swaps = 0  # type: ignore[attr-defined]  # the next swap sweeps
        await store.swap_head("l:other", "", None, "a", None, 60)
        conn = await asyncpg.connect(url)
        try:
            left = await conn.fetchval(
                "SELECT count(*) FROM agentlocks_heads WHERE namespace = $1", namespace
            )
        finally:
            await conn.close()
        assert left == 1
