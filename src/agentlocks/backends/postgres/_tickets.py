"""Publishing how many requests wait in this process's local queues, for ``max_waiting``.

Each process sends only the head of a key's local FIFO to the server (``postgres/_queue.py``), so
``pg_locks`` shows other processes' heads but not the requests queued behind them. To count
those cluster-wide, a process publishes the length of each local queue as advisory locks:
bit ``b`` of the length set <=> this process holds ``ticket_base + b`` in shared mode (shared,
so any number of processes can hold the same bit; pg_locks has one row per session and
key). Reading the count is a sum of ``2**b`` over other sessions' rows; publishing costs at
most 32 lock-table entries per key per process, whatever the queue length.

Updates run in the background: one flusher per backend wakes ``PUBLISH_DELAY`` (10 ms)
after a change and brings every changed key up to date in one statement per session, so a
burst of changes (every hand-off changes a length twice) over any number of keys costs a
few statements per tick, not two per hand-off. A key's bits always live on the same shared
session (the one that took them is the one that can drop them), and publishing never waits
in the server (``pg_try_advisory_lock_shared``). So the published length lags the queue by
about 10 ms plus a round trip; readers may count a request that has just left, or miss one
that has just arrived, the same as any read of a moving queue.

Invariant: a key's state is never forgotten while it has bits published or an update
pending (``KeyState.idle``), so no ticket lock outlives the queue it counts. If an update
fails without losing its connection (which would drop the bits with it), the bits are
unknown: the keys it covered stop publishing on that session and it is logged; stale bits
then make other processes count too many waiters (refusing early, never admitting too
many) until that session closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agentlocks._tasks import TaskSupervisor

from ._connection import Session
from ._queue import KeyState
from ._session import Sessions
from ._sql import TICKET_BITS, Sql

logger = logging.getLogger("agentlocks")

#: Seconds between a queue change and its publication (changes meanwhile coalesce).
PUBLISH_DELAY = 0.01


def bit_keys(base: int, n: int) -> list[int]:
    """The advisory keys that stand for the bits set in ``n``."""
    return [base + b for b in range(TICKET_BITS) if n >> b & 1]


def _length(state: KeyState) -> int:
    return min(state.hidden_waiting(), (1 << TICKET_BITS) - 1)


class WaitCounts:
    """Keeps each key's published local-queue length in step with the queue."""

    def __init__(
        self,
        sessions: Sessions,
        sql: Sql,
        forget: Callable[[KeyState], None],
        tasks: TaskSupervisor,
    ) -> None:
        self._sessions = sessions
        self._tasks = tasks
        self._sql = sql
        self._forget = forget  # drops a key's state once it is idle
        self._dirty: dict[KeyState, None] = {}  # keys to bring up to date, in change order
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    def changed(self, state: KeyState) -> None:
        """A key's local queue changed: publish its new length at the next tick."""
        if (
            self._closed
            or self._tasks.closed
            or state.ticket_pending
            or state.published == _length(state)
        ):
            return
        state.ticket_pending = True
        self._dirty[state] = None
        if self._flusher is None:
            self._flusher = self._tasks.spawn(self._flush(), name="postgres waiting counts")

    async def _flush(self) -> None:
        try:
            while self._dirty:
                await asyncio.sleep(PUBLISH_DELAY)
                states, self._dirty = list(self._dirty), {}
                await self._publish(states)
        finally:
            self._flusher = None

    async def _publish(self, states: list[KeyState]) -> None:
        """Bring ``states``' published lengths up to date: one statement per session."""
        updates: dict[Session, list[tuple[KeyState, int]]] = {}
        failed = False
        try:
            for state in states:
                session = state.ticket_session
                if session is not None and session.dead:
                    state.published, state.ticket_session = 0, None  # its bits went with it
                    session = None
                want = _length(state)
                if want != state.published:
                    if session is None:
                        session = state.ticket_session = await self._sessions.shared()
                    updates.setdefault(session, []).append((state, want))
            results = await asyncio.gather(*(self._send(s, u) for s, u in updates.items()))
            failed = not all(results)
        except Exception as exc:  # nothing awaits the flusher: report, never raise
            logger.warning("could not publish waiting counts: %s", exc)
            failed = True
        finally:
            for state in states:
                state.ticket_pending = False
                if state.published == 0:
                    state.ticket_session = None
                # Moved meanwhile: again at the next tick (after a failure, at the next change).
                if not failed and state.published != _length(state):
                    self.changed(state)
                else:
                    self._forget(state)

    async def _send(self, session: Session, updates: list[tuple[KeyState, int]]) -> bool:
        take: list[int] = []
        drop: list[int] = []
        for state, want in updates:
            base, have = state.keys.ticket_base, state.published
            take += bit_keys(base, want & ~have)
            drop += bit_keys(base, have & ~want)
        try:
            await session.run(self._sql.publish_bits, take, drop)
        except Exception as exc:
            if not (session.dead or session.conn.is_closed()):
                logger.warning("could not publish waiting counts: %s", exc)
            for state, _ in updates:
                state.published, state.ticket_session = 0, None
            return False
        for state, want in updates:
            state.published = want
        return True

    async def aclose(self) -> None:
        """Stop publishing (closing the sessions drops whatever was published)."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
