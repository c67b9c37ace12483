"""memory:// specifics: per-key state is dropped at once, and a stress of many random tasks."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

import agentlocks
from agentlocks.backends import Grant
from agentlocks.backends.memory import MemoryBackend


def state_size(coord: agentlocks.Coordinator) -> int:
    backend = coord.backend
    assert isinstance(backend, MemoryBackend)
    return len(backend)


async def test_idle_keys_leave_no_entry() -> None:
    """After exclusive, shared, semaphore, timed-out and cancelled requests, no entry remains."""
    coord = agentlocks.connect()
    async with (
        coord.acquire("a"),
        coord.acquire("b", shared=True),
        coord.acquire("b", shared=True),
        coord.semaphore("s", 2),
    ):
        assert state_size(coord) == 3
        with pytest.raises(agentlocks.AcquireTimeout):
            await coord.acquire("a", timeout=0.01)
        waiter = asyncio.create_task(coord.semaphore("s", 1).__aenter__())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert state_size(coord) == 0
    for i in range(10_000):
        await (await coord.acquire(f"k{i}")).release()
    assert state_size(coord) == 0


async def test_tokens_come_from_one_counter() -> None:
    """Tokens grow across all keys of a coordinator, so each key's tokens grow too."""
    coord = agentlocks.connect()
    tokens = []
    for key in ("x", "y", "x", "z", "y"):
        async with coord.acquire(key) as lease:
            tokens.append(lease.token)
    assert tokens == [1, 2, 3, 4, 5]


async def test_coordinators_do_not_share_memory_state() -> None:
    """Two memory:// coordinators are independent (state lives in the coordinator)."""
    first, second = agentlocks.connect(), agentlocks.connect()
    async with first.acquire("k"), second.acquire("k", wait=False):
        pass


@pytest.mark.parametrize("seed", range(5))
async def test_stress_many_tasks_random_cancellations(seed: int) -> None:
    """400 tasks on 8 keys, mixed modes, random cancels and timeouts: exclusion holds, no leak."""
    rng = random.Random(seed)
    coord = agentlocks.connect()
    exclusive: Counter[str] = Counter()
    shared: Counter[str] = Counter()
    violations: list[str] = []
    grants: Counter[str] = Counter()

    async def worker(key: str, is_shared: bool, timeout: float | None) -> None:
        try:
            async with coord.acquire(key, shared=is_shared, timeout=timeout):
                grants[key] += 1
                (shared if is_shared else exclusive)[key] += 1
                if exclusive[key] > 1 or (exclusive[key] and shared[key]):
                    violations.append(key)
                try:
                    await asyncio.sleep(rng.random() / 500)
                finally:  # a cancel may land while holding
                    (shared if is_shared else exclusive)[key] -= 1
        except agentlocks.AcquireTimeout:
            pass

    tasks = []
    for _ in range(400):
        key = f"k{rng.randrange(8)}"
        timeout = rng.choice([None, None, 0, 0.001, 0.01])
        tasks.append(asyncio.create_task(worker(key, rng.random() < 0.4, timeout)))
        if rng.random() < 0.3:
            await asyncio.sleep(0)
    for task in rng.sample(tasks, 100):
        task.cancel()
        if rng.random() < 0.5:
            await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert violations == []
    assert sum(grants.values()) > 0
    assert state_size(coord) == 0
    for i in range(8):
        info = await coord.inspect(f"k{i}")
        assert (info.holders, info.waiting) == ((), 0)


async def test_retry_after_follows_measured_waits() -> None:
    """After requests waited ~50 ms to be granted, a refusal suggests about that, not 1 s."""
    coord = agentlocks.connect()

    async def hold_briefly(lease: agentlocks.Lease) -> None:
        await asyncio.sleep(0.05)
        await lease.release()

    for _ in range(3):
        holder = await coord.acquire("r")
        release = asyncio.create_task(hold_briefly(holder))
        async with coord.acquire("r", timeout=5):  # waits ~50 ms on the slow path
            pass
        await release
    async with coord.acquire("r"):
        with pytest.raises(agentlocks.Busy) as refused:
            await coord.acquire("r", wait=False)
    assert 0.02 < refused.value.retry_after < 0.5


def test_inlined_grant_construction_matches_the_constructor() -> None:
    """try_acquire's inlined Grant construction sets every slot exactly as Grant() does."""
    backend = agentlocks.connect().backend
    assert isinstance(backend, MemoryBackend)
    fast = backend.try_acquire("l:k", False, None, 7.0)
    assert fast is not None
    slow = Grant(fast.resource, fast.token, fast.shared, fast.lease_ttl, fast.acquired_at)
    for slot in Grant.__slots__:
        assert getattr(fast, slot) == getattr(slow, slot), slot
    assert (fast.resource, fast.shared, fast.lease_ttl, fast.handle) == ("l:k", False, 7.0, None)
