"""Guarantees 1, 4, 5, 6, 8, 9, 10 of API.md: exclusion, fencing, leases, ownership, keys."""

from __future__ import annotations

import asyncio
import random

import pytest

import agentlocks
from agentlocks import Coordinator, LeaseLost

from ._harness import Connect, SuiteHarness, conformance

#: Keys that must work and stay distinct on every backend (guarantee 10).
ODD_KEYS = (
    "a",
    "a ",
    " a",
    "thread:42",
    "{hash}tag",
    "{",
    "}",
    "user:{id}:x",
    "ключ",
    "鍵🔒",
    "tab\there",
    "new\nline",
    "%s%d",
    "*",
    "?[a]",
    "x" * 1024,
    "é" * 512,
)


class LockGuarantees(SuiteHarness):
    """Exclusion, shared holders, fencing, ownership, keys, state, leases."""

    # -- 1. exclusion --------------------------------------------------------------------------

    @conformance
    async def test_exclusive_holders_never_overlap(self, coord: Coordinator) -> None:
        """Fifty tasks doing read-yield-write under one lock lose no increment."""
        counter = 0
        inside = 0

        async def bump() -> None:
            nonlocal counter, inside
            async with coord.acquire("counter"):
                inside += 1
                assert inside == 1, "two exclusive holders at once"
                value = counter
                await asyncio.sleep(random.random() / 1000)
                counter = value + 1
                inside -= 1

        await asyncio.gather(*(bump() for _ in range(50)))
        assert counter == 50

    @conformance
    async def test_exclusion_holds_across_coordinators(self, connect: Connect) -> None:
        """Two coordinators on one URL and namespace exclude each other (shared state)."""
        first, second = await connect(), await connect()
        if not first.backend.shared_state:
            pytest.skip("in-process coordinators do not share state")
        async with first.acquire("shared-key"):
            with pytest.raises(agentlocks.Busy):
                await second.acquire("shared-key", wait=False)
        async with second.acquire("shared-key", timeout=10):
            pass

    @conformance
    async def test_namespaces_are_isolated(self, connect: Connect) -> None:
        """The same key in two namespaces is two different locks."""
        first, other = await connect(), await connect(namespace="conformance-other-ns")
        async with first.acquire("k"), other.acquire("k", wait=False):
            pass

    @conformance
    async def test_shared_holders_overlap_and_exclude_writers(self, coord: Coordinator) -> None:
        """Shared holders hold together; an exclusive request waits for all of them."""
        readers = [await coord.acquire("doc", shared=True, wait=False) for _ in range(3)]
        assert all(lease.shared for lease in readers)
        assert len((await coord.inspect("doc")).holders) == 3
        with pytest.raises(agentlocks.Busy):
            await coord.acquire("doc", wait=False)
        writer = self.start(coord.acquire("doc"))
        await self.settle(coord, "doc", 1)
        for lease in readers[:2]:
            await lease.release()
        assert not writer.done()
        await readers[2].release()
        lease = await asyncio.wait_for(writer, 10)
        assert not lease.shared
        with pytest.raises(agentlocks.Busy):
            await coord.acquire("doc", shared=True, wait=False)
        await lease.release()

    # -- 4. fencing ----------------------------------------------------------------------------

    @conformance
    async def test_tokens_grow_with_every_grant(self, coord: Coordinator) -> None:
        """Tokens are ints, strictly increasing per key, across idle periods and modes."""
        tokens = []
        for shared in (False, True, False, True, True, False):
            async with coord.acquire("fenced", shared=shared) as lease:
                assert isinstance(lease.token, int)
                tokens.append(lease.token)
            await asyncio.sleep(0)  # the key is idle here: its state may be gone
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)

    @conformance
    async def test_tokens_grow_in_grant_order_under_contention(self, coord: Coordinator) -> None:
        """Twenty contending tasks receive tokens in the order they were granted."""
        granted: list[int] = []

        async def take() -> None:
            async with coord.acquire("contended") as lease:
                granted.append(lease.token)
                await asyncio.sleep(0)

        await asyncio.gather(*(take() for _ in range(20)))
        assert granted == sorted(granted) and len(set(granted)) == 20

    @conformance
    async def test_tokens_grow_across_coordinators(self, connect: Connect) -> None:
        """A new coordinator's grants get tokens above every earlier one (shared state)."""
        first = await connect()
        if not first.backend.shared_state:
            pytest.skip("tokens are per coordinator in-process")
        async with first.acquire("fenced-x") as lease:
            before = lease.token
        second = await connect()
        async with second.acquire("fenced-x") as lease:
            assert lease.token > before

    # -- 5/6. leases ---------------------------------------------------------------------------

    @conformance
    async def test_lease_outlives_its_ttl_while_renewed(self, coord: Coordinator) -> None:
        """A lease held for three TTLs is renewed in the background and still verifies."""
        if not coord.backend.leases_expire:
            pytest.skip("this backend's leases never expire")
        async with coord.acquire("renewed", lease_ttl=1.0) as lease:
            await asyncio.sleep(3.0)
            await lease.verify()
            assert not lease.lost

    @conformance
    async def test_lost_lease_cancels_the_block_and_raises(self, coord: Coordinator) -> None:
        """A lost lease sets lost, cancels the body and raises LeaseLost on exit."""
        reached_end = False
        with pytest.raises(LeaseLost):
            async with coord.acquire("doomed", lease_ttl=2.0) as lease:
                await self.break_lease(coord, lease)
                await asyncio.sleep(10)  # must be cancelled long before this ends
                reached_end = True
        assert lease.lost and not reached_end
        async with coord.acquire("doomed", timeout=10) as after:
            assert after.token > lease.token

    @conformance
    async def test_lost_lease_with_ignore_runs_on_then_raises(self, coord: Coordinator) -> None:
        """on_lost="ignore" lets the body finish, and leaving still raises LeaseLost."""
        finished = False
        with pytest.raises(LeaseLost):
            async with coord.acquire("doomed", lease_ttl=2.0, on_lost="ignore") as lease:
                await self.break_lease(coord, lease)
                with pytest.raises(LeaseLost):
                    await lease.verify()
                finished = True
        assert finished and lease.lost

    # -- 8. ownership --------------------------------------------------------------------------

    @conformance
    async def test_release_is_idempotent_and_only_releases_its_own_grant(
        self, coord: Coordinator
    ) -> None:
        """Releasing a lease twice leaves the next holder's grant untouched."""
        first = await coord.acquire("owned")
        await first.release()
        second = await coord.acquire("owned", wait=False)
        await first.release()  # stale: must not free `second`
        with pytest.raises(agentlocks.Busy):
            await coord.acquire("owned", wait=False)
        await second.verify()
        await second.release()
        with pytest.raises(LeaseLost):
            await second.verify()
        await self.assert_idle(coord, "owned")

    @conformance
    async def test_lease_can_be_released_by_another_task(self, coord: Coordinator) -> None:
        """Ownership lives in the Lease: a lease handed to another task is released there."""
        lease = await coord.acquire("handed")

        async def finish() -> None:
            await lease.release()

        await asyncio.create_task(finish())
        async with coord.acquire("handed", wait=False):
            pass

    # -- 9. bounded state ----------------------------------------------------------------------

    @conformance
    async def test_idle_keys_leave_nothing_held(self, coord: Coordinator) -> None:
        """After many keys were used and released, none reports a holder or a waiter."""
        keys = [f"k{i}" for i in range(200)]
        for key in keys:
            async with coord.acquire(key, shared=key.endswith("7")):
                pass
        for key in keys[::20]:
            await self.assert_idle(coord, key)

    # -- 10. keys ------------------------------------------------------------------------------

    @conformance
    async def test_any_valid_key_works_and_keys_stay_distinct(self, coord: Coordinator) -> None:
        """Colons, braces, spaces, any Unicode, 1024 bytes: each key is its own lock."""
        leases = [await coord.acquire(key, wait=False) for key in ODD_KEYS]
        for key in ODD_KEYS:
            with pytest.raises(agentlocks.Busy):
                await coord.acquire(key, wait=False)
        assert [lease.key for lease in leases] == list(ODD_KEYS)
        for lease in leases:
            await lease.release()

    @conformance
    async def test_invalid_keys_fail_before_io(self, coord: Coordinator) -> None:
        """Empty, too long, non-str and unencodable keys raise InvalidKey at call time."""
        for bad in ("", "x" * 1025, "é" * 513, "\ud800", b"bytes", 42, None):
            with pytest.raises(agentlocks.InvalidKey):
                coord.acquire(bad)  # type: ignore[arg-type]
            with pytest.raises(agentlocks.InvalidKey):
                coord.semaphore(bad, capacity=2)  # type: ignore[arg-type]

    # -- observability -------------------------------------------------------------------------

    @conformance
    async def test_inspect_reports_holders_and_waiters(self, coord: Coordinator) -> None:
        """inspect() shows each holder's token, mode and age, and the waiting count."""
        lease = await coord.acquire("seen")
        waiter = self.start(coord.acquire("seen"))
        await self.settle(coord, "seen", 1)
        info = await coord.inspect("seen")
        assert info.key == "seen" and info.held and info.waiting == 1
        (holder,) = info.holders
        assert holder.token == lease.token and not holder.shared and holder.age >= 0
        await lease.release()
        await (await asyncio.wait_for(waiter, 10)).release()
        await self.assert_idle(coord, "seen")
