"""Guarantees 2, 3 and 7 of API.md: FIFO, pushed hand-off, cancellation safety; and the
fail-fast options (``wait=False``, ``max_waiting``, ``timeout``)."""

from __future__ import annotations

import asyncio
import random

import pytest

import agentlocks
from agentlocks import Coordinator, Lease

from ._harness import SuiteHarness, conformance


class QueueGuarantees(SuiteHarness):
    """Queue order, hand-off and every way of leaving a queue."""

    async def queue_up(self, coord: Coordinator, key: str, modes: str) -> list[asyncio.Task[Lease]]:
        """Queue one request per letter of ``modes`` (``x`` exclusive, ``s`` shared), in order."""
        tasks = []
        for mode in modes:
            tasks.append(self.start(coord.acquire(key, shared=mode == "s")))
            await self.settle(coord, key, len(tasks))
        return tasks

    # -- 2. FIFO -------------------------------------------------------------------------------

    @conformance
    async def test_waiters_are_granted_in_arrival_order(self, coord: Coordinator) -> None:
        """Eight queued exclusive requests are granted in exactly the order they queued."""
        holder = await coord.acquire("fifo")
        tasks = await self.queue_up(coord, "fifo", "x" * 8)
        order: list[int] = []
        await holder.release()
        for index, task in enumerate(tasks):
            lease = await asyncio.wait_for(task, 10)
            order.append(index)
            assert all(not t.done() for t in tasks[index + 1 :]), "a later waiter jumped ahead"
            await lease.release()
        assert order == list(range(8))

    @conformance
    async def test_releaser_cannot_barge_ahead_of_waiters(self, coord: Coordinator) -> None:
        """A task that releases and re-acquires at once queues behind the existing waiter."""
        lease = await coord.acquire("no-barging")
        waiter = self.start(coord.acquire("no-barging"))
        await self.settle(coord, "no-barging", 1)
        await lease.release()
        with pytest.raises(agentlocks.Busy):
            await coord.acquire("no-barging", wait=False)
        again = self.start(coord.acquire("no-barging"))
        first = await asyncio.wait_for(waiter, 10)
        assert not again.done()
        await first.release()
        await (await asyncio.wait_for(again, 10)).release()

    @conformance
    async def test_queued_writer_blocks_later_readers(self, coord: Coordinator) -> None:
        """Writers never starve: a reader arriving after a queued writer waits for it."""
        reader = await coord.acquire("rw", shared=True)
        writer, late_reader = await self.queue_up(coord, "rw", "xs")
        with pytest.raises(agentlocks.Busy):
            await coord.acquire("rw", shared=True, wait=False)
        await reader.release()
        write = await asyncio.wait_for(writer, 10)
        assert not late_reader.done()
        await write.release()
        await (await asyncio.wait_for(late_reader, 10)).release()

    @conformance
    async def test_adjacent_readers_at_the_head_are_granted_together(
        self, coord: Coordinator
    ) -> None:
        """After a writer, the readers queued behind it are granted at once; a writer waits."""
        writer = await coord.acquire("batch")
        tasks = await self.queue_up(coord, "batch", "sssx")
        await writer.release()
        readers = [await asyncio.wait_for(task, 10) for task in tasks[:3]]
        assert len((await coord.inspect("batch")).holders) == 3
        assert not tasks[3].done()
        for lease in readers:
            await lease.release()
        await (await asyncio.wait_for(tasks[3], 10)).release()

    # -- 3. pushed hand-off --------------------------------------------------------------------

    @conformance
    async def test_release_itself_hands_the_key_to_the_next_waiter(
        self, coord: Coordinator
    ) -> None:
        """When release() returns, the waiter already holds the key: no poll is involved."""
        lease = await coord.acquire("pushed")
        waiter = self.start(coord.acquire("pushed"))
        await self.settle(coord, "pushed", 1)
        await lease.release()
        info = await coord.inspect("pushed")
        assert info.waiting == 0 and len(info.holders) == 1
        assert info.holders[0].token > lease.token
        await (await asyncio.wait_for(waiter, 10)).release()

    # -- 7. cancellation safety ----------------------------------------------------------------

    @conformance
    async def test_cancelled_waiter_leaves_the_queue(self, coord: Coordinator) -> None:
        """Cancelling a queued request removes it; the next waiter is served instead."""
        lease = await coord.acquire("cancel")
        doomed, survivor = await self.queue_up(coord, "cancel", "xx")
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await self.settle(coord, "cancel", 1)
        await lease.release()
        await (await asyncio.wait_for(survivor, 10)).release()
        await self.assert_idle(coord, "cancel")

    @conformance
    async def test_cancelled_head_writer_unblocks_readers_behind_it(
        self, coord: Coordinator
    ) -> None:
        """A queued writer that gives up lets the readers queued behind it join the holders."""
        reader = await coord.acquire("unblock", shared=True)
        writer, late_reader = await self.queue_up(coord, "unblock", "xs")
        writer.cancel()
        await (await asyncio.wait_for(late_reader, 10)).release()
        await reader.release()
        await self.assert_idle(coord, "unblock")

    @conformance
    async def test_grant_racing_a_cancellation_is_handed_on(self, coord: Coordinator) -> None:
        """A waiter cancelled just as it is granted does not keep the key."""
        lease = await coord.acquire("race")
        doomed, survivor = await self.queue_up(coord, "race", "xx")
        await lease.release()  # the grant goes to `doomed` ...
        doomed.cancel()  # ... which is cancelled before it can run
        results = await asyncio.gather(doomed, return_exceptions=True)
        if isinstance(results[0], Lease):  # it completed before the cancel landed
            await results[0].release()
        await (await asyncio.wait_for(survivor, 10)).release()
        await self.assert_idle(coord, "race")

    @conformance
    async def test_release_right_after_a_cancel_skips_the_cancelled_waiter(
        self, coord: Coordinator
    ) -> None:
        """A waiter cancelled just before a release is not granted; the next one is."""
        lease = await coord.acquire("skip")
        doomed, survivor = await self.queue_up(coord, "skip", "xx")
        doomed.cancel()  # its cleanup has not run yet ...
        await lease.release()  # ... when the key is handed on
        await asyncio.wait([doomed])
        # Even when a remote grant raced the cancellation, the cancelled task never
        # receives it: the backend hands that grant on (to the survivor).
        assert doomed.cancelled(), doomed
        await (await asyncio.wait_for(survivor, 10)).release()
        await self.assert_idle(coord, "skip")

    @conformance
    async def test_timeout_raises_and_leaves_the_queue(self, coord: Coordinator) -> None:
        """A timed-out request raises AcquireTimeout (a TimeoutError) and is no longer queued."""
        async with coord.acquire("slow"):
            with pytest.raises(agentlocks.AcquireTimeout) as caught:
                await coord.acquire("slow", timeout=0.05)
            assert isinstance(caught.value, TimeoutError)
            assert caught.value.key == "slow" and caught.value.retry_after > 0
            assert (await coord.inspect("slow")).waiting == 0
        await self.assert_idle(coord, "slow")

    @conformance
    async def test_zero_timeout_on_a_free_key_succeeds(self, coord: Coordinator) -> None:
        """timeout=0 means do not wait: a free key is still granted."""
        async with coord.acquire("instant", timeout=0):
            pass

    @conformance
    async def test_cancellation_storm_leaves_nothing_behind(self, coord: Coordinator) -> None:
        """Sixty waiters, a third cancelled and a third timing out: survivors in order, key free."""
        rng = random.Random(7)
        holder = await coord.acquire("storm")
        tasks: list[asyncio.Task[Lease]] = []
        fates = [rng.choice("cts") for _ in range(60)]  # cancel / timeout / survive
        for fate in fates:
            timeout = rng.uniform(0.01, 0.2) if fate == "t" else None
            tasks.append(self.start(coord.acquire("storm", timeout=timeout)))
        await asyncio.sleep(0.05)
        for task, fate in zip(tasks, fates, strict=True):
            if fate == "c":
                task.cancel()
            await asyncio.sleep(0)
        await asyncio.sleep(0.25)
        await holder.release()
        tokens = []
        for task, fate in zip(tasks, fates, strict=True):
            outcome = await asyncio.gather(task, return_exceptions=True)
            if fate == "s":
                assert isinstance(outcome[0], Lease), outcome
                tokens.append(outcome[0].token)
                await outcome[0].release()
            elif isinstance(outcome[0], Lease):  # granted before its cancel/timeout landed
                await outcome[0].release()
        assert tokens == sorted(tokens)
        await self.assert_idle(coord, "storm")

    # -- fail fast -----------------------------------------------------------------------------

    @conformance
    async def test_wait_false_raises_busy_without_queueing(self, coord: Coordinator) -> None:
        """wait=False on a held key raises Busy at once and queues nothing."""
        async with coord.acquire("busy"):
            with pytest.raises(agentlocks.Busy) as caught:
                await coord.acquire("busy", wait=False)
            assert isinstance(caught.value, agentlocks.Unavailable)
            assert caught.value.key == "busy"
            assert (await coord.inspect("busy")).waiting == 0

    @conformance
    async def test_max_waiting_rejects_when_the_queue_is_full(self, coord: Coordinator) -> None:
        """With max_waiting=2 and two requests queued, a third raises QueueFull at once."""
        async with coord.acquire("full"):
            tasks = await self.queue_up(coord, "full", "xx")
            with pytest.raises(agentlocks.QueueFull) as caught:
                await coord.acquire("full", max_waiting=2)
            assert caught.value.retry_after > 0
            lease = self.start(coord.acquire("full", max_waiting=3))
            await self.settle(coord, "full", 3)
        for task in [*tasks, lease]:
            await (await asyncio.wait_for(task, 10)).release()
        await self.assert_idle(coord, "full")
