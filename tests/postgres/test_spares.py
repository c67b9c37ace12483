"""The spare-session budget: FIFO waits when it is spent, no deadlock, a full server.

Leases that only set the scene are taken in tasks of their own (``_held_elsewhere``): a
task holding a grant of the process skips the budget, and tasks started from it inherit
that, which is the deadlock avoidance under test here, not something to trip over.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

import agentlocks
from agentlocks import AcquireTimeout, BackendError, Coordinator, Lease
from agentlocks.backends.postgres import PostgresBackend
from tests.support.waiting import until, until_waiting

from .conftest import Connect, connections_of, no_advisory_locks_soon

pytestmark = pytest.mark.postgres


def _backend(coord: Coordinator) -> PostgresBackend:
    backend = coord._backend  # white-box: the spare budget's counts
    assert isinstance(backend, PostgresBackend)
    return backend


async def _held_elsewhere(coord: Coordinator, *keys: str) -> list[Lease]:
    """Take ``keys`` in a task of their own (this task's context stays free of grants)."""

    async def take() -> list[Lease]:
        return [await coord.acquire(key) for key in keys]

    return await asyncio.create_task(take())


async def _hold(coord: Coordinator, key: str, events: list[str], release: asyncio.Event) -> None:
    async with coord.acquire(key):
        events.append(key)
        await release.wait()


async def test_waits_past_max_spares_queue_fifo_and_respect_their_timeout(
    connect: Connect, admin: asyncpg.Connection, app_name: str
) -> None:
    """max_spares=1: a second contended key waits for the spare, FIFO, within its timeout."""
    other, coord = connect(), connect(max_spares=1, pool_size=1, spare_patience=60)
    held = await _held_elsewhere(other, "k1", "k2", "k3")
    backend = _backend(coord)
    events: list[str] = []
    go = {key: asyncio.Event() for key in ("k1", "k2", "k3")}
    first = asyncio.create_task(_hold(coord, "k1", events, go["k1"]))
    await until_waiting(other, "k1", 1)
    assert backend._sessions.spares_lent == 1
    before = await connections_of(admin, app_name)

    with pytest.raises(AcquireTimeout):
        await coord.acquire("k2", timeout=0.3)  # waited for the spare, not in the server
    assert backend._sessions.spare_line == 0

    second = asyncio.create_task(_hold(coord, "k2", events, go["k2"]))
    await until(lambda: backend._sessions.spare_line == 1)
    third = asyncio.create_task(_hold(coord, "k3", events, go["k3"]))
    await until(lambda: backend._sessions.spare_line == 2)
    for lease in held[1:]:
        await lease.release()  # k2 and k3 are free, but their requests wait for the spare
    await asyncio.sleep(0.2)
    assert events == []
    assert await connections_of(admin, app_name) == before

    await held[0].release()
    await until(lambda: events == ["k1"])
    go["k1"].set()
    await until(lambda: events == ["k1", "k2"])
    await asyncio.sleep(0.1)
    assert events == ["k1", "k2"]  # the spare is pinned by k2's grant: k3 still waits
    go["k2"].set()
    go["k3"].set()
    await asyncio.wait_for(asyncio.gather(first, second, third), 10)
    assert events == ["k1", "k2", "k3"]
    assert await connections_of(admin, app_name) == before


async def test_a_task_holding_a_grant_may_exceed_max_spares(connect: Connect) -> None:
    """The holder of the only spare asks for another contended key: no deadlock."""
    other, coord = connect(), connect(max_spares=1)
    (k1, k2, k3) = await _held_elsewhere(other, "k1", "k2", "k3")
    backend = _backend(coord)

    async def nested() -> tuple[int, int, int]:
        # k1 waits on the one spare and keeps it; k2 needs a second spare.
        async with coord.acquire("k1") as outer, coord.acquire("k2", timeout=10) as inner:
            # A child task inherits the holder's context: it may exceed the budget too.
            child = await asyncio.create_task(_token_of(coord, "k3"))
            return outer.token, inner.token, child

    task = asyncio.create_task(nested())
    await until_waiting(other, "k1", 1)
    await k1.release()
    await until_waiting(other, "k2", 1)
    assert backend._sessions.spares_lent == 2
    await k2.release()
    await until_waiting(other, "k3", 1)
    await k3.release()
    tokens = await asyncio.wait_for(task, 10)
    assert tokens[0] < tokens[1] < tokens[2]
    assert backend._sessions.spares_lent == 0


async def test_leases_held_across_tasks_cannot_deadlock_on_the_budget(connect: Connect) -> None:
    """Leases held across tasks pin every spare; the next wait exceeds the budget in time."""
    # Leases taken by gather() children and held by the parent pin every spare; the parent's
    # next wait cannot see them, so it goes over the budget after spare_patience.
    other, coord = connect(), connect(max_spares=2, spare_patience=0.2)
    held = await _held_elsewhere(other, "a", "b", "c")
    backend = _backend(coord)
    mine = asyncio.gather(coord.acquire("a", timeout=10), coord.acquire("b", timeout=10))
    await until_waiting(other, "a", 1)
    await until_waiting(other, "b", 1)
    for lease in held[:2]:
        await lease.release()
    leases = await asyncio.wait_for(mine, 10)  # both pinned on the two spares, held here
    assert backend._sessions.spares_lent == 2
    waited = asyncio.get_running_loop().time()
    third = asyncio.create_task(_token_of(coord, "c"))
    await until(lambda: backend._sessions.spare_line == 1)  # in line for the budget ...
    await until(lambda: backend._sessions.spares_lent == 3)  # ... then over it
    waited = asyncio.get_running_loop().time() - waited
    assert waited >= 0.15
    await held[2].release()
    assert await asyncio.wait_for(third, 10) > max(lease.token for lease in leases)
    for lease in leases:
        await lease.release()


async def _token_of(coord: Coordinator, key: str) -> int:
    async with coord.acquire(key, timeout=10) as lease:
        return lease.token


@pytest_asyncio.fixture
async def limited_url(pg_url: str, admin: asyncpg.Connection) -> AsyncIterator[str]:
    """A role allowed 3 connections, owning a schema of its own for the token sequence."""
    role = f"limited_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 3')
    await admin.execute(f'CREATE SCHEMA "{role}" AUTHORIZATION "{role}"')
    parts = pg_url.split("://", 1)[1].split("@", 1)[1]
    yield f"postgresql://{role}@{parts}?schema={role}"
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
    )
    await admin.execute(f'DROP SCHEMA "{role}" CASCADE')
    await admin.execute(f'DROP ROLE "{role}"')


async def test_a_full_server_makes_waits_queue_for_a_spare_to_come_back(
    connect: Connect, limited_url: str
) -> None:
    """Connection limit reached: a wait queues for one of ours; none lent -> BackendError."""
    other = connect()
    held = await _held_elsewhere(other, "k1", "k2", "k3", "k4")
    coord = agentlocks.connect(
        limited_url, namespace=other.namespace, pool_size=1, spare_patience=60
    )
    backend = _backend(coord)
    events: list[str] = []
    go = {key: asyncio.Event() for key in ("k1", "k2", "k3")}
    try:
        tasks = [asyncio.create_task(_hold(coord, key, events, go[key])) for key in ("k1", "k2")]
        await until_waiting(other, "k2", 1)
        await until_waiting(other, "k1", 1)
        tasks.append(asyncio.create_task(_hold(coord, "k3", events, go["k3"])))
        # The role's three connections: one shared session and two spares. k3 waits.
        await until(lambda: backend._sessions.spare_line == 1)
        await held[2].release()
        await held[0].release()
        await until(lambda: events == ["k1"])
        await asyncio.sleep(0.1)
        assert "k3" not in events
        go["k1"].set()  # k1's spare comes back: k3 takes it and gets its (free) key at once
        await until(lambda: events == ["k1", "k3"])

        # Now every connection is in use and this task holds a grant: no waiting for a
        # spare (it could be what they wait for): BackendError at once.
        async with coord.acquire("free"):
            with pytest.raises(BackendError, match="no connection slot free"):
                await coord.acquire("k4", timeout=5)

        # A coordinator with nothing lent has nothing to wait for.
        late = agentlocks.connect(limited_url, namespace=other.namespace, pool_size=1)
        try:
            with pytest.raises(BackendError, match="no connection slot free"):
                await late.acquire("anything")
        finally:
            await late.aclose()
        go["k2"].set()
        go["k3"].set()
        await held[1].release()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        await coord.aclose()
        await held[3].release()


async def test_random_timeouts_over_a_small_budget_leak_nothing(
    connect: Connect, admin: asyncpg.Connection, app_name: str
) -> None:
    """60 tasks, 6 keys, max_spares=2, random timeouts: exclusion holds, nothing leaks."""
    # Afterwards no spare is lent, no reservation is left, no lock is held.
    coord = connect(max_spares=2, pool_size=2)
    backend = _backend(coord)
    rng = random.Random(7)
    inside: dict[str, int] = {}
    overlaps = granted = queued_for_spare = 0

    async def worker(index: int) -> None:
        nonlocal overlaps, granted, queued_for_spare
        key = f"hot{index % 6}"
        for _ in range(5):
            try:
                async with coord.acquire(key, timeout=rng.choice([0.001, 0.01, 0.05, 1.0])):
                    inside[key] = inside.get(key, 0) + 1
                    overlaps += inside[key] > 1
                    granted += 1
                    await asyncio.sleep(rng.random() * 0.003)
                    inside[key] -= 1
            except AcquireTimeout:
                pass

    async def sample() -> None:
        nonlocal queued_for_spare
        while True:
            queued_for_spare = max(queued_for_spare, backend._sessions.spare_line)
            await asyncio.sleep(0.001)

    sampler = asyncio.create_task(sample())
    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(60))), 60)
    sampler.cancel()
    assert overlaps == 0 and granted > 0
    assert queued_for_spare > 0  # the budget was spent: requests did wait for a spare
    assert backend._sessions.spares_lent == 0
    assert backend._sessions._budget.taken == 0
    assert backend._sessions.spare_line == 0
    await no_advisory_locks_soon(admin, app_name)
