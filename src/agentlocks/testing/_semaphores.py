"""Semaphores and registries: capacity, FIFO, fail-fast options, published generations."""

from __future__ import annotations

import asyncio

import pytest

import agentlocks
from agentlocks import Coordinator

from ._harness import Connect, SuiteHarness, conformance


class SemaphoreGuarantees(SuiteHarness):
    """``coord.semaphore`` and ``coord.registry`` on the backend under test."""

    @conformance
    async def test_semaphore_admits_at_most_capacity(self, coord: Coordinator) -> None:
        """Thirty tasks through a capacity-3 semaphore: never more than three inside."""
        inside = peak = 0

        async def work() -> None:
            nonlocal inside, peak
            async with coord.semaphore("llm", capacity=3):
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0.002)
                inside -= 1

        await asyncio.gather(*(work() for _ in range(30)))
        assert peak == 3
        await self.assert_idle(coord, "llm", semaphore=True)

    @conformance
    async def test_semaphore_waiters_are_served_in_order(self, coord: Coordinator) -> None:
        """When slots free up, the longest-waiting requests get them first."""
        held = [await coord.semaphore("slots", capacity=2) for _ in range(2)]
        tasks = []
        for _ in range(4):
            tasks.append(self.start(coord.semaphore("slots", capacity=2)))
            await self.settle(coord, "slots", len(tasks), semaphore=True)
        await held[0].release()
        first = await asyncio.wait_for(tasks[0], 10)
        assert not any(task.done() for task in tasks[1:])
        await held[1].release()
        second = await asyncio.wait_for(tasks[1], 10)
        assert not any(task.done() for task in tasks[2:])
        for lease in (first, second):
            await lease.release()
        for task in tasks[2:]:
            await (await asyncio.wait_for(task, 10)).release()
        await self.assert_idle(coord, "slots", semaphore=True)

    @conformance
    async def test_semaphore_fail_fast_options(self, coord: Coordinator) -> None:
        """wait=False raises Busy when full; max_waiting raises QueueFull; timeout times out."""
        held = await coord.semaphore("cap1", capacity=1)
        with pytest.raises(agentlocks.Busy):
            await coord.semaphore("cap1", capacity=1, wait=False)
        with pytest.raises(agentlocks.QueueFull):
            await coord.semaphore("cap1", capacity=1, max_waiting=0)
        with pytest.raises(agentlocks.AcquireTimeout):
            await coord.semaphore("cap1", capacity=1, timeout=0.05)
        assert (await coord.inspect("cap1", semaphore=True)).waiting == 0
        await held.release()
        await self.assert_idle(coord, "cap1", semaphore=True)

    @conformance
    async def test_semaphore_names_and_lock_keys_are_separate(self, coord: Coordinator) -> None:
        """A semaphore and a lock with the same name do not interfere."""
        async with coord.acquire("same"), coord.semaphore("same", capacity=1, wait=False):
            pass

    @conformance
    async def test_semaphore_tokens_grow(self, coord: Coordinator) -> None:
        """Every semaphore grant gets a greater token than the ones before it."""
        tokens = []
        for _ in range(5):
            async with coord.semaphore("tok", capacity=2) as lease:
                tokens.append(lease.token)
        assert tokens == sorted(tokens) and len(set(tokens)) == 5

    # -- registries ----------------------------------------------------------------------------

    @conformance
    async def test_registry_readers_share_and_a_writer_excludes(self, coord: Coordinator) -> None:
        """Readers overlap; a writer waits for them and blocks readers that come after it."""
        tools = coord.registry("tools")
        events: list[str] = []
        first_reader_in = asyncio.Event()
        release_readers = asyncio.Event()

        async def reader(name: str) -> None:
            async with tools.read():
                events.append(f"{name}+")
                first_reader_in.set()
                await release_readers.wait()
                events.append(f"{name}-")

        async def writer() -> None:
            async with tools.write():
                events.append("w+")
                await asyncio.sleep(0.01)
                events.append("w-")

        readers = [asyncio.create_task(reader(f"r{i}")) for i in range(2)]
        await first_reader_in.wait()
        await self.settle_registry(coord, holders=2, waiting=0)
        write = asyncio.create_task(writer())
        await self.settle_registry(coord, holders=2, waiting=1)
        late = asyncio.create_task(reader("late"))
        await self.settle_registry(coord, holders=2, waiting=2)
        assert events == ["r0+", "r1+"] or events == ["r1+", "r0+"]
        release_readers.set()
        await asyncio.wait_for(asyncio.gather(*readers, write, late), 10)
        assert events.index("w+") > max(events.index("r0-"), events.index("r1-"))
        assert events.index("late+") > events.index("w-")

    async def settle_registry(self, coord: Coordinator, holders: int, waiting: int) -> None:
        """Wait until the "tools" registry lock has that many holders and waiters."""
        while True:
            current, queued = await coord.backend.inspect("l:tools")
            if (len(current), queued) == (holders, waiting):
                return
            await asyncio.sleep(0.001)

    @conformance
    async def test_registry_generation_grows_only_on_clean_writes(self, coord: Coordinator) -> None:
        """A clean write publishes current+1; a failed write publishes nothing."""
        tools = coord.registry("routing")
        assert await tools.version() == 0
        async with tools.write() as version:
            assert version == 1
        assert await tools.version() == 1
        with pytest.raises(RuntimeError):
            async with tools.write() as version:
                assert version == 2
                raise RuntimeError("reload failed")
        assert await tools.version() == 1
        async with tools.read() as version:
            assert version == 1
        async with tools.write() as version:
            assert version == 2
        assert await tools.version() == 2

    @conformance
    async def test_registry_generation_is_seen_by_other_coordinators(
        self, connect: Connect
    ) -> None:
        """A write published through one coordinator is visible to another (shared state)."""
        first, second = await connect(), await connect()
        if not first.backend.shared_state:
            pytest.skip("in-process coordinators do not share state")
        async with first.registry("prompts").write():
            pass
        assert await second.registry("prompts").version() == 1
