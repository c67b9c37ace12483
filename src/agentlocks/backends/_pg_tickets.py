"""Publishing how many requests wait in this process's local queues, for ``max_waiting``.

Each process sends only the head of a key's local FIFO to the server (``_pg_queue.py``), so
``pg_locks`` shows other processes' heads but not the requests queued behind them. To count
those cluster-wide, a process publishes the length of each local queue as advisory locks:
bit ``b`` of the length set <=> this process holds ``ticket_base + b`` in shared mode (shared,
so any number of processes can hold the same bit; pg_locks has one row per session and
key). Reading the count is a sum of ``2**b`` over other sessions' rows; publishing costs at
most 32 lock-table entries per key per process, whatever the queue length.

Updates run in the background, one at a time per key, ``PUBLISH_DELAY`` (10 ms) after a
change so that the changes of a burst (every hand-off changes the length twice) coalesce
into one statement, always on the same shared session (the one that took the bits is the
one that can drop them), and never wait in the server (``pg_try_advisory_lock_shared``).
So the published length lags the queue by about 10 ms plus a round trip; readers may
count a request that has just left, or miss one that has just arrived, the same as any
read of a moving queue.

Invariant: a key's state is never forgotten while it has bits published or an update in
flight (``KeyState.idle``), so no ticket lock outlives the queue it counts. If an update
fails without losing its connection (which would drop the bits with it), the bits it held
are unknown: it gives up publishing on that session and logs it; stale bits then make
other processes count too many waiters (refusing early, never admitting too many) until
that session closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ._pg_queue import KeyState
from ._pg_session import Sessions
from ._pg_sql import TICKET_BITS, Sql

logger = logging.getLogger("agentlocks")

#: Seconds between a queue change and its publication (changes meanwhile coalesce).
PUBLISH_DELAY = 0.01


def bits(n: int) -> list[int]:
    """The bit positions set in ``n``."""
    return [b for b in range(TICKET_BITS) if n >> b & 1]


class WaitCounts:
    """Keeps each key's published local-queue length in step with the queue."""

    def __init__(
        self,
        sessions: Sessions,
        sql: Sql,
        forget: Callable[[str, KeyState], None],
    ) -> None:
        self._sessions = sessions
        self._sql = sql
        self._forget = forget  # drops a key's state once it is idle
        self._tasks: set[asyncio.Task[None]] = set()

    def changed(self, state: KeyState) -> None:
        """A key's local queue changed: bring its published length in step."""
        if state.ticket_task is None and state.published != len(state.queue):
            task = asyncio.get_running_loop().create_task(self._publish(state.resource, state))
            state.ticket_task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _publish(self, resource: str, state: KeyState) -> None:
        session = None
        try:
            while True:
                # Let a burst of queue changes settle into one statement: a hand-off changes
                # the length twice per grant, far more often than anyone needs to read it.
                await asyncio.sleep(PUBLISH_DELAY)
                want = min(len(state.queue), (1 << TICKET_BITS) - 1)
                if want == state.published:
                    break
                session = state.ticket_session
                if session is None or session.dead:
                    state.published = 0  # a dead session's bits went with it
                    if want == 0:
                        break
                    session = state.ticket_session = await self._sessions.shared()
                have = state.published
                await session.run(
                    self._sql.publish_bits,
                    state.keys.ticket_base,
                    bits(want & ~have),
                    bits(have & ~want),
                )
                state.published = want
                if want == 0:
                    state.ticket_session = None
        except Exception as exc:  # nothing awaits this task: report, never raise
            if session is None or not (session.dead or session.conn.is_closed()):
                logger.warning("could not publish the waiting count of %r: %s", resource, exc)
            state.published, state.ticket_session = 0, None
        finally:
            state.ticket_task = None
            self._forget(resource, state)

    async def aclose(self) -> None:
        """Stop publishing (closing the sessions drops whatever was published)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
