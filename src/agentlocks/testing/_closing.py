"""Guarantees 6 and 7 under hostile callers, and what ``aclose()`` promises (API.md).

Repeated ``task.cancel()`` (a task group aborting while ``asyncio.timeout`` fires) must not
drop a release or leave a withdrawn request queued; closing a coordinator fails its waiting
requests at once and reports its held leases as lost, never as granted or released.
"""

from __future__ import annotations

import asyncio

import pytest

import agentlocks
from agentlocks import Coordinator, LeaseLost

from ._harness import Connect, SuiteHarness, conformance


async def _cancel_repeatedly(task: asyncio.Task[object], times: int = 3) -> None:
    """Cancel ``task``, then cancel it again on each of the next loop iterations."""
    for _ in range(times):
        task.cancel()
        await asyncio.sleep(0)


class ClosingGuarantees(SuiteHarness):
    """Repeated cancellation of holders and waiters; closing with work in flight."""

    @conformance
    async def test_release_survives_repeated_cancels(self, coord: Coordinator) -> None:
        """A holder cancelled again and again while leaving still releases its lock."""
        entered = asyncio.Event()

        async def holder() -> None:
            async with coord.acquire("k", lease_ttl=60):
                entered.set()
                await asyncio.sleep(30)

        for _ in range(5):
            entered.clear()
            task = asyncio.create_task(holder())
            await entered.wait()
            await _cancel_repeatedly(task)
            with pytest.raises(asyncio.CancelledError):
                await task
            # Freed by the release itself, not by the 60 s lease running out.
            async with coord.acquire("k", timeout=5):
                pass
        await self.assert_idle(coord, "k")

    @conformance
    async def test_waiter_cancelled_repeatedly_leaves_no_trace(self, coord: Coordinator) -> None:
        """A queued request cancelled several times in a row leaves the queue for good."""
        holder = await coord.acquire("k")
        waiters = [self.start(coord.acquire("k")) for _ in range(5)]
        await self.settle(coord, "k", 5)
        for task in waiters:
            await _cancel_repeatedly(task)
        await asyncio.wait(waiters)
        assert all(task.cancelled() for task in waiters)
        await self.settle(coord, "k", 0)
        await holder.release()
        async with coord.acquire("k", wait=False):
            pass
        await self.assert_idle(coord, "k")

    @conformance
    async def test_aclose_fails_waiting_requests_and_loses_held_leases(
        self, connect: Connect
    ) -> None:
        """Closing: waiters fail at once with AgentLocksError; held leases are lost."""
        coord = await connect()
        held = await coord.acquire("k")
        waiters = [self.start(coord.acquire("k")) for _ in range(3)]
        slot = await coord.semaphore("s", 1)
        slot_waiter = self.start(coord.semaphore("s", 1, timeout=30))
        await self.settle(coord, "k", 3)
        await self.settle(coord, "s", 1, semaphore=True)
        await asyncio.wait_for(coord.aclose(), 10)
        for task in [*waiters, slot_waiter]:
            with pytest.raises(agentlocks.AgentLocksError) as info:
                await asyncio.wait_for(task, 5)  # at once, not after a timeout
            assert not isinstance(info.value, agentlocks.AcquireTimeout)
        assert held.lost and slot.lost
        with pytest.raises(LeaseLost):
            await held.release()
        with pytest.raises(LeaseLost):
            await slot.release()
        with pytest.raises(agentlocks.AgentLocksError):
            await coord.acquire("k")

    @conformance
    async def test_aclose_leaves_other_coordinators_waiters_alone(self, connect: Connect) -> None:
        """Closing one coordinator frees its grants for the waiters of another one."""
        first = await connect()
        if not first.backend.shared_state:
            pytest.skip("in-process coordinators do not share state")
        second = await connect()
        await first.acquire("k")
        waiter = self.start(second.acquire("k", timeout=20))
        await self.settle(second, "k", 1)
        await first.aclose()
        lease = await asyncio.wait_for(waiter, 15)  # granted: the closed holder released
        assert not lease.lost
        await lease.release()
