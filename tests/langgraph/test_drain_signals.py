"""DrainSignals on every backend: requests reach the run holding the thread, and only it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from agentlocks import ConfigError, Coordinator
from agentlocks.backends._signals import LocalSignals
from agentlocks.backends.redis._signals import signal_keys
from agentlocks.langgraph._context import current_lease
from agentlocks.langgraph._drain import DrainSignals, thread_key

from ._drain_support import BACKEND_NAMES, Cancels, Control, coordinators

Factory = Callable[[], Coordinator]


@pytest.fixture(params=BACKEND_NAMES)
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Coordinators on one backend and namespace (each one like another process)."""
    async with coordinators(request.param) as factory:
        yield factory


async def leftovers(coord: Coordinator, thread_id: str) -> int:
    """How many signal records the backend still keeps for ``thread_id``'s lock."""
    backend: object = coord.backend
    resource = "l:" + thread_key(thread_id)
    signals = getattr(backend, "_signals", None)
    if isinstance(signals, LocalSignals):
        return sum(1 for res, _ in signals._records if res == resource)
    url = coord.backend._settings.url if hasattr(coord.backend, "_settings") else None
    if url is None:  # Redis keeps no settings object; its link knows the URL
        url = coord.backend._link._base_url  # type: ignore[attr-defined]
    if url.startswith("redis"):
        raw = aioredis.Redis.from_url(url)
        try:
            return int(await raw.exists(signal_keys(coord.namespace, resource)[4]))
        finally:
            await raw.aclose()
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM agentlocks_signals WHERE namespace = $1 AND resource = $2"
            " AND expires_at > now()",
            coord.namespace,
            resource,
        )
        return count
    finally:
        await conn.close()


async def test_drain_request_from_another_coordinator_reaches_the_watching_run(
    make: Factory,
) -> None:
    """A drain request sent through coordinator B sets drain on the run watching in A."""
    never = Cancels()
    a, b = make(), make()
    control = Control()
    async with (
        a.acquire(thread_key("t1")) as lease,
        DrainSignals(a).watch("t1", control, never, lease=lease),
    ):
        assert not control.drain_requested
        await DrainSignals(b).request_drain("t1")
        await asyncio.wait_for(control.drained.wait(), 5)
    assert control.drain_reason is not None and "interrupted" in control.drain_reason
    assert never.calls == 0


async def test_request_sent_before_the_watch_started_is_seen_on_entry(make: Factory) -> None:
    """A request made after the lock was granted but before watch() began applies at entry."""
    never = Cancels()
    a, b = make(), make()
    control = Control()
    async with a.acquire(thread_key("t2")) as lease:
        await DrainSignals(b).request_drain("t2")
        async with DrainSignals(a).watch("t2", control, never, lease=lease):
            assert control.drain_requested  # no waiting: read from the stored record
    assert never.calls == 0


async def test_request_for_an_earlier_holder_never_reaches_the_next_run(make: Factory) -> None:
    """A request sent while run 1 held the thread does not drain run 2 (the requester's own)."""
    never = Cancels()
    a, b = make(), make()
    first = await a.acquire(thread_key("t3"))
    await DrainSignals(b).request_drain("t3")
    await first.release()
    control = Control()
    async with (
        b.acquire(thread_key("t3")) as lease,
        DrainSignals(b).watch("t3", control, never, lease=lease),
    ):
        await asyncio.sleep(0.2)  # time for any push to arrive
        assert not control.drain_requested
    assert never.calls == 0


async def test_cancel_request_calls_cancel_once(make: Factory) -> None:
    """request_cancel after request_drain calls the watching run's cancel() exactly once."""
    a, b = make(), make()
    control = Control()
    called = asyncio.Event()
    calls: list[None] = []

    def cancel() -> None:
        calls.append(None)
        called.set()

    requester = DrainSignals(b)
    async with (
        a.acquire(thread_key("t4")) as lease,
        DrainSignals(a).watch("t4", control, cancel, lease=lease),
    ):
        await requester.request_drain("t4")
        await asyncio.wait_for(control.drained.wait(), 5)
        assert not calls
        await requester.request_cancel("t4")
        await asyncio.wait_for(called.wait(), 5)
        await asyncio.sleep(0.1)
    assert len(calls) == 1


async def test_cancel_reaches_only_the_run_its_drain_request_reached(make: Factory) -> None:
    """If the thread changed hands after the drain request, the new run drains, uncancelled."""
    never = Cancels()
    a, b, c = make(), make(), make()
    requester = DrainSignals(b)
    first = await a.acquire(thread_key("t5"))
    await requester.request_drain("t5")
    await first.release()  # run 1 ended; run 2 (another requester's) takes the thread
    control = Control()
    async with (
        c.acquire(thread_key("t5")) as lease,
        DrainSignals(c).watch("t5", control, never, lease=lease),
    ):
        assert not control.drain_requested
        await requester.request_cancel("t5")  # after its drain timeout, say
        await asyncio.wait_for(control.drained.wait(), 5)
        await asyncio.sleep(0.1)  # a cancel would have arrived by now
    assert never.calls == 0


async def test_cancel_without_an_earlier_drain_request_cancels_the_current_holder(
    make: Factory,
) -> None:
    """request_cancel with no drain request of this process cancels whoever holds the thread."""
    a, b = make(), make()
    control, cancels = Control(), Cancels()
    async with (
        a.acquire(thread_key("t8")) as lease,
        DrainSignals(a).watch("t8", control, cancels, lease=lease),
    ):
        await DrainSignals(b).request_cancel("t8")
        await asyncio.wait_for(cancels.called.wait(), 5)
    assert control.drain_requested
    assert cancels.calls == 1


async def test_records_acted_on_are_cleared_when_the_watch_ends(make: Factory) -> None:
    """After the drained run's watch exits, no signal record of its thread remains."""
    never = Cancels()
    a, b = make(), make()
    control = Control()
    async with (
        a.acquire(thread_key("t6")) as lease,
        DrainSignals(a).watch("t6", control, never, lease=lease),
    ):
        await DrainSignals(b).request_drain("t6")
        await asyncio.wait_for(control.drained.wait(), 5)
        assert await leftovers(a, "t6") == 1
    assert await leftovers(a, "t6") == 0
    assert never.calls == 0


async def test_watch_finds_the_lease_in_context_or_asks_the_backend(make: Factory) -> None:
    """Without lease=, watch() uses the held lock's token: a stale request is still ignored."""
    never = Cancels()
    a, b = make(), make()
    first = await a.acquire(thread_key("t7"))
    await DrainSignals(b).request_drain("t7")
    await first.release()
    control = Control()
    async with a.acquire(thread_key("t7")), DrainSignals(a).watch("t7", control, never):
        assert not control.drain_requested  # the token came from coord.inspect()
        await DrainSignals(b).request_drain("t7")
        await asyncio.wait_for(control.drained.wait(), 5)
    await DrainSignals(b).request_drain("t7")  # for the run that just ended
    control = Control()
    async with a.acquire(thread_key("t7")) as lease:
        reset = current_lease.set(lease)  # as guard_graph sets it for its run
        try:
            async with DrainSignals(a).watch("t7", control, never):
                assert not control.drain_requested
        finally:
            current_lease.reset(reset)
    assert never.calls == 0


def test_a_backend_without_signals_is_refused_with_a_clear_error() -> None:
    """DrainSignals on a backend lacking signal/watch_signals/clear_signal: ConfigError."""
    coord: Any = SimpleNamespace(backend=object())
    with pytest.raises(ConfigError, match="signal, watch_signals, clear_signal"):
        DrainSignals(coord)
