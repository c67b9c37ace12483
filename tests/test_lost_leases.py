"""The coordinator's remote-backend policy: renewal, lost leases, shielded release.

Runs against ``lossy://`` (tests/support/lossy_backend.py), the memory backend behind the
remote contract, so every path the Redis and PostgreSQL backends rely on is exercised
without a server; the same conformance suite also runs on it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

import agentlocks
from agentlocks import Coordinator, Lease, LeaseLost
from agentlocks.testing import ConformanceSuite
from tests.support.lossy_backend import LossyBackend

agentlocks.register_backend("lossy", "tests.support.lossy_backend:LossyBackend", replace=True)


def backend_of(coord: Coordinator) -> LossyBackend:
    backend = coord.backend
    assert isinstance(backend, LossyBackend)
    return backend


@pytest.fixture
async def coord() -> AsyncIterator[Coordinator]:
    async with agentlocks.connect(f"lossy://?namespace=t-{uuid.uuid4().hex}") as coord:
        yield coord


class TestLossyConformance(ConformanceSuite):
    """The whole conformance suite on lossy://, breaking leases by revoking grants."""

    @pytest.fixture
    def backend_url(self) -> str:
        """lossy:// in the suite's namespace (the suite adds it)."""
        return "lossy://"

    async def break_lease(self, coord: Coordinator, lease: Lease) -> None:
        """Revoke the grant; the coordinator learns it at the next renewal."""
        backend_of(coord).revoke(lease._grant)


async def test_revoked_lease_cancels_block_within_a_renewal_interval(coord: Coordinator) -> None:
    """A grant gone on the "server" is noticed by renewal: block cancelled, LeaseLost raised."""
    reached = False
    with pytest.raises(LeaseLost) as caught:
        async with coord.acquire("k", lease_ttl=0.3) as lease:
            backend_of(coord).revoke(lease._grant)
            await asyncio.sleep(5)
            reached = True
    assert lease.lost
    assert not reached
    assert caught.value.key == "k"


async def test_pushed_loss_cancels_at_once(coord: Coordinator) -> None:
    """A backend that reports a loss itself (on_lost callback) cancels the block at once."""
    with pytest.raises(LeaseLost):
        async with coord.acquire("k", lease_ttl=60) as lease:
            backend_of(coord).revoke(lease._grant, notify=True)
            await asyncio.sleep(5)
    assert lease.lost


async def test_renewal_keeps_a_lease_alive_past_its_ttl(coord: Coordinator) -> None:
    """A lease held for four TTLs is renewed in the background and never reported lost."""
    async with coord.acquire("k", lease_ttl=0.2) as lease:
        await asyncio.sleep(0.8)
        await lease.verify()
    assert backend_of(coord).renew_calls >= 3
    assert not lease.lost


async def test_unreachable_server_past_the_ttl_loses_the_lease(coord: Coordinator) -> None:
    """Renewals failing for longer than the TTL mark the lease lost and cancel the block."""
    backend_of(coord).fail_renewals = True
    with pytest.raises(LeaseLost):
        async with coord.acquire("k", lease_ttl=0.3) as lease:
            await asyncio.sleep(5)
    assert lease.lost


async def test_brief_outage_within_the_ttl_is_survived(coord: Coordinator) -> None:
    """One failed renewal followed by a good one, inside the TTL, does not lose the lease."""
    backend = backend_of(coord)
    async with coord.acquire("k", lease_ttl=0.6) as lease:
        backend.fail_renewals = True
        await asyncio.sleep(0.25)  # about one renewal interval (ttl / 3)
        backend.fail_renewals = False
        await asyncio.sleep(0.5)
        assert not lease.lost


async def test_awaitable_form_reports_loss_on_release(coord: Coordinator) -> None:
    """Without a block to cancel, a lost lease makes release() raise LeaseLost, every time."""
    lease = await coord.acquire("k", lease_ttl=60)
    backend_of(coord).revoke(lease._grant, notify=True)
    assert lease.lost
    with pytest.raises(LeaseLost):
        await lease.verify()
    with pytest.raises(LeaseLost):
        await lease.release()
    with pytest.raises(LeaseLost):
        await lease.release()


async def test_body_error_is_chained_under_lease_lost(coord: Coordinator) -> None:
    """If the body fails after the loss (on_lost="ignore"), LeaseLost carries that error."""
    with pytest.raises(LeaseLost) as caught:
        async with coord.acquire("k", lease_ttl=60, on_lost="ignore") as lease:
            backend_of(coord).revoke(lease._grant, notify=True)
            raise KeyError("body failed")
    assert isinstance(caught.value.__cause__, KeyError)


async def test_release_failure_is_reported_when_the_lease_was_fine(coord: Coordinator) -> None:
    """A release the server never got raises BackendError (the grant will expire)."""
    lease = await coord.acquire("k", lease_ttl=60)
    backend_of(coord).fail_releases = True
    with pytest.raises(agentlocks.BackendError):
        await lease.release()


async def test_release_is_shielded_from_cancellation(coord: Coordinator) -> None:
    """Cancelling a task while its block exits still releases the lock."""
    entered = asyncio.Event()

    async def holder() -> None:
        async with coord.acquire("k", lease_ttl=60):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(holder())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with coord.acquire("k", wait=False):
        pass


async def test_renewal_task_stops_on_close() -> None:
    """aclose() stops the renewal task; a closed coordinator refuses new requests."""
    coord = agentlocks.connect(f"lossy://?namespace=t-{uuid.uuid4().hex}")
    lease = await coord.acquire("k", lease_ttl=0.3)
    renewer = coord._renewer
    assert renewer is not None
    assert renewer._task is not None
    await lease.release()
    await coord.aclose()
    assert renewer._task is None
    with pytest.raises(agentlocks.ConfigError, match="closed"):
        await coord.acquire("k")


async def test_stalled_event_loop_makes_the_release_report_a_loss(coord: Coordinator) -> None:
    """A holder whose own loop stalled past the lease leaves its block with LeaseLost."""
    with pytest.raises(LeaseLost):
        async with coord.acquire("k", lease_ttl=0.3) as lease:
            time.sleep(0.5)  # noqa: ASYNC251 -- the stall under test: no timer can run
    assert lease.lost
    awaited = await coord.acquire("k2", lease_ttl=0.3)
    time.sleep(0.5)  # noqa: ASYNC251 -- the stall under test
    with pytest.raises(LeaseLost):
        await awaited.release()
    assert awaited.lost


async def test_silent_renewals_lose_the_lease_by_the_clock(coord: Coordinator) -> None:
    """Renewals that never answer: lost at 0.9 lease_ttl, body cancelled, not hung."""
    backend_of(coord).hang_renewals = True
    started = time.monotonic()
    with pytest.raises(LeaseLost):
        async with coord.acquire("k", lease_ttl=0.6):
            await asyncio.sleep(30)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.5, elapsed  # lease_ttl * 0.9 = 0.54 s


async def test_release_of_a_grant_gone_on_the_server_raises(coord: Coordinator) -> None:
    """release() reports the server's "not held" answer as LeaseLost, never success."""
    lease = await coord.acquire("k", lease_ttl=60)
    backend_of(coord).revoke(lease._grant)  # gone, and nobody told the coordinator
    with pytest.raises(LeaseLost):
        await lease.release()
    assert lease.lost


async def test_aclose_cancels_the_body_of_a_held_lease(coord: Coordinator) -> None:
    """Closing the coordinator cancels blocks of held leases, which then raise LeaseLost."""
    entered = asyncio.Event()
    reached = False

    async def holder() -> None:
        nonlocal reached
        async with coord.acquire("k", lease_ttl=60):
            entered.set()
            await asyncio.sleep(30)
            reached = True

    task = asyncio.create_task(holder())
    await entered.wait()
    await coord.aclose()
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(task, 5)
    assert not reached


async def test_verify_applies_the_clock_rule(coord: Coordinator) -> None:
    """verify() after a stall past the lease raises LeaseLost although the server has it."""
    lease = await coord.acquire("k", lease_ttl=0.3)
    time.sleep(0.4)  # noqa: ASYNC251 -- the stall under test
    with pytest.raises(LeaseLost):
        await lease.verify()
    assert lease.lost
