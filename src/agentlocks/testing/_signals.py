"""Signals to lock holders (``Backend.signal``): marks, records, pushes and clearing.

These are the backend's side of LangGraph's ``on_busy="interrupt"``: a signal must reach
exactly the holders granted before it, be pushed to a watch (from another coordinator when
coordinators share state), and be found by a watch that starts after it was sent.
"""

from __future__ import annotations

import asyncio

from agentlocks import Coordinator

from ._harness import Connect, SuiteHarness, conformance

#: Seconds a pushed signal may take to arrive.
PUSH_WITHIN = 5.0


class _Inbox:
    """Collects what a watch delivers; ``arrived`` is set on every delivery."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int]] = []
        self.arrived = asyncio.Event()

    def deliver(self, kind: str, mark: int) -> None:
        self.got.append((kind, mark))
        self.arrived.set()


class SignalGuarantees(SuiteHarness):
    """``Backend.signal`` / ``watch_signals`` / ``clear_signal`` on the backend under test."""

    @conformance
    async def test_signal_mark_is_above_earlier_tokens_and_below_later_ones(
        self, coord: Coordinator
    ) -> None:
        """A fresh mark exceeds every token granted before it and precedes every later one."""
        backend = coord.backend
        before = await coord.acquire("sig:mark")
        mark = await backend.signal("l:sig:mark", "drain", ttl=30)
        await before.release()
        after = await coord.acquire("sig:mark")
        await after.release()
        assert before.token < mark < after.token

    @conformance
    async def test_signal_is_pushed_to_a_running_watch(self, connect: Connect) -> None:
        """A signal sent while a watch runs reaches it (from another coordinator if shared)."""
        watcher = await connect()
        sender = await connect() if watcher.backend.shared_state else watcher
        inbox = _Inbox()
        async with watcher.backend.watch_signals("l:sig:push", inbox.deliver):
            assert inbox.got == []
            mark = await sender.backend.signal("l:sig:push", "drain", ttl=30)
            await asyncio.wait_for(inbox.arrived.wait(), PUSH_WITHIN)
        assert ("drain", mark) in inbox.got

    @conformance
    async def test_signal_sent_before_a_watch_starts_is_delivered_on_entry(
        self, coord: Coordinator
    ) -> None:
        """The stored record reaches a watch that starts later, before entering returns."""
        mark = await coord.backend.signal("l:sig:record", "cancel", ttl=30)
        inbox = _Inbox()
        async with coord.backend.watch_signals("l:sig:record", inbox.deliver):
            assert inbox.got == [("cancel", mark)]

    @conformance
    async def test_signal_record_keeps_the_highest_mark_and_is_cleared_by_it(
        self, coord: Coordinator
    ) -> None:
        """A reused lower mark does not lower the record; clear_signal needs the record's mark."""
        backend = coord.backend
        low = await backend.signal("l:sig:clear", "drain", ttl=30)
        high = await backend.signal("l:sig:clear", "drain", ttl=30)
        await backend.signal("l:sig:clear", "drain", ttl=30, mark=low)
        await backend.clear_signal("l:sig:clear", "drain", low)  # not the record's mark
        inbox = _Inbox()
        async with backend.watch_signals("l:sig:clear", inbox.deliver):
            assert inbox.got == [("drain", high)]
        await backend.clear_signal("l:sig:clear", "drain", high)
        inbox = _Inbox()
        async with backend.watch_signals("l:sig:clear", inbox.deliver):
            assert inbox.got == []

    @conformance
    async def test_signal_record_expires_after_its_ttl(self, coord: Coordinator) -> None:
        """A record is not delivered once its ttl has passed."""
        await coord.backend.signal("l:sig:ttl", "drain", ttl=0.2)
        await asyncio.sleep(0.4)
        inbox = _Inbox()
        async with coord.backend.watch_signals("l:sig:ttl", inbox.deliver):
            assert inbox.got == []

    @conformance
    async def test_nothing_is_delivered_after_a_watch_ends(self, coord: Coordinator) -> None:
        """A watch that was left receives nothing more; other resources' signals never."""
        inbox = _Inbox()
        async with coord.backend.watch_signals("l:sig:left", inbox.deliver):
            await coord.backend.signal("l:sig:other", "drain", ttl=30)
            await asyncio.sleep(0.1)
        await coord.backend.signal("l:sig:left", "drain", ttl=30)
        await asyncio.sleep(0.1)
        assert inbox.got == []
