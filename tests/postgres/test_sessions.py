"""Lost leases, cancellation storms and the connection budget, on the real server."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

import agentlocks
from agentlocks import AcquireTimeout, Lease, LeaseLost
from agentlocks.backends.postgres import _session
from tests.support.waiting import until_waiting

from .conftest import Connect, advisory_locks_of, connections_of, no_advisory_locks_soon

pytestmark = pytest.mark.postgres


async def test_terminated_backend_loses_the_lease_and_the_next_waiter_proceeds(
    connect: Connect, admin: asyncpg.Connection
) -> None:
    """pg_terminate_backend on the holder: lost, block cancelled, LeaseLost, waiter goes on."""
    holder, other = connect(), connect()
    reached_end = False
    waiter: asyncio.Task[Lease] | None = None
    with pytest.raises(LeaseLost):
        async with holder.acquire("job") as lease:
            waiter = asyncio.create_task(_take(other))
            await until_waiting(other, "job", 1)
            pid = holder.backend.backend_pid(lease._grant)  # type: ignore[attr-defined]
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)
            await asyncio.sleep(30)  # cancelled as soon as the loss is noticed
            reached_end = True
    assert lease.lost and not reached_end
    assert waiter is not None
    after = await asyncio.wait_for(waiter, 20)
    assert after.token > lease.token
    await after.release()


async def _take(coord: agentlocks.Coordinator) -> Lease:
    return await coord.acquire("job")


async def test_cancellation_storm_of_200_waiters_leaves_nothing(
    connect: Connect, admin: asyncpg.Connection, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 waiters cancelled or timed out: no lock held, no waiter queued, no session leaked."""
    monkeypatch.setattr(_session, "IDLE_LINGER", 0.2)
    coord = connect(pool_size=2, max_idle=1)
    holder = await coord.acquire("storm")
    rng = random.Random(4)
    timeouts = [rng.choice([None, 0.01, 0.05, 0.2]) for _ in range(200)]
    tasks = [asyncio.create_task(_take_with(coord, "storm", t)) for t in timeouts]
    await asyncio.sleep(0.05)
    for task in tasks[::2]:
        task.cancel()
        await asyncio.sleep(0)
    await asyncio.sleep(0.3)
    await holder.release()
    tokens = []
    for outcome in await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30):
        if isinstance(outcome, int):  # survived: granted, in order
            tokens.append(outcome)
        else:
            assert isinstance(outcome, asyncio.CancelledError | AcquireTimeout), outcome
    patient = sum(1 for t in timeouts[1::2] if t is None)  # neither cancelled nor timed out
    assert tokens == sorted(tokens) and len(tokens) >= patient > 0
    info = await coord.inspect("storm")
    assert info.holders == () and info.waiting == 0
    await no_advisory_locks_soon(admin, app_name)
    # Budget: the shared sessions plus at most max_idle spares stay open, nothing more
    # (idle spares beyond max_idle are closed after IDLE_LINGER, shortened here).
    async with asyncio.timeout(5):
        while await connections_of(admin, app_name) > 2 + 1:
            await asyncio.sleep(0.05)
    await coord.aclose()
    assert await connections_of(admin, app_name) == 0


async def _take_with(coord: agentlocks.Coordinator, key: str, timeout: float | None) -> int:
    async with coord.acquire(key, timeout=timeout) as lease:
        return lease.token


async def test_a_thousand_locks_held_at_once_stay_within_the_budget(
    connect: Connect, admin: asyncpg.Connection, app_name: str
) -> None:
    """1,000 locks held by one process use at most pool_size connections (documented)."""
    coord = connect(pool_size=4)
    leases: list[Lease] = []
    for chunk in range(10):
        leases += await asyncio.gather(
            *(coord.acquire(f"k{chunk}-{i}", wait=False) for i in range(100))
        )
    assert len({lease.key for lease in leases}) == 1000
    assert await advisory_locks_of(admin, app_name) == 1000
    connections = await connections_of(admin, app_name)
    print(f"\n1,000 locks held over {connections} connection(s)")
    assert 1 <= connections <= 4
    for lease in leases:
        await lease.release()
    await no_advisory_locks_soon(admin, app_name)


async def test_200_waiters_on_one_key_use_one_waiting_session(
    connect: Connect, admin: asyncpg.Connection, app_name: str
) -> None:
    """Queued tasks of one process wait locally behind one server-side waiter, FIFO."""
    coord = connect(pool_size=1)
    holder = await coord.acquire("queue")
    order: list[int] = []

    async def take(index: int) -> None:
        async with coord.acquire("queue"):
            order.append(index)

    tasks = []
    for index in range(200):
        tasks.append(asyncio.create_task(take(index)))
        await asyncio.sleep(0)
    await until_waiting(coord, "queue", 200)
    waiting_in_server = await admin.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = $1",
        app_name,
    )
    assert waiting_in_server == 1
    assert await connections_of(admin, app_name) == 2  # one shared session, one spare
    await holder.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert order == list(range(200))


async def test_user_supplied_pool_is_used_and_left_open(pg_url: str) -> None:
    """connect(postgres=pool) takes connections from the pool and gives them back clean."""
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=6)
    try:
        coord = agentlocks.connect(postgres=pool, namespace="pgtest-pool")
        async with coord.acquire("pooled") as lease:
            await lease.verify()
            assert coord.backend.backend_pid(lease._grant) is not None  # type: ignore[attr-defined]
        async with coord.semaphore("pooled", capacity=2):
            pass
        await coord.aclose()
        assert not pool._closed
        async with pool.acquire() as conn:
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND pid = pg_backend_pid()"
            )
            assert held == 0
    finally:
        await pool.close()


async def test_many_tasks_over_many_keys_keep_exclusion_when_statements_coalesce(
    connect: Connect, admin: asyncpg.Connection, app_name: str
) -> None:
    """64 tasks on 20 keys over 2 shared sessions (batched statements): exact per-key counts."""
    coord = connect(pool_size=2)
    counts = dict.fromkeys(range(20), 0)
    inside: set[int] = set()
    rng = random.Random(11)

    async def work() -> None:
        for _ in range(25):
            key = rng.randrange(20)
            async with coord.acquire(f"mk{key}"):
                assert key not in inside, "two holders of one key at once"
                inside.add(key)
                value = counts[key]
                await asyncio.sleep(0)
                counts[key] = value + 1
                inside.discard(key)

    await asyncio.wait_for(asyncio.gather(*(work() for _ in range(64))), 50)
    assert sum(counts.values()) == 64 * 25
    await no_advisory_locks_soon(admin, app_name)


async def test_cancellations_at_random_moments_leave_no_lock_behind(
    connect: Connect, admin: asyncpg.Connection, app_name: str
) -> None:
    """Tasks cancelled at random points of acquire, hold and release leave pg_locks empty."""
    coord = connect(pool_size=2)
    rng = random.Random(5)

    async def use(key: str) -> None:
        async with coord.acquire(key, shared=rng.random() < 0.3):
            await asyncio.sleep(rng.random() / 1000)

    for _ in range(5):
        tasks = [asyncio.create_task(use(f"c{rng.randrange(8)}")) for _ in range(100)]
        await asyncio.sleep(rng.random() / 200)
        for task in tasks:
            if rng.random() < 0.5:
                task.cancel()
            if rng.random() < 0.2:
                await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    for key in range(8):
        info = await coord.inspect(f"c{key}")
        assert info.holders == () and info.waiting == 0, info
    await no_advisory_locks_soon(admin, app_name)
