"""Liveness checks of the PostgreSQL sessions that hold grants.

A connection that ends is noticed at once (asyncpg's termination callback). One that
silently stops answering (a network partition, a frozen server) is not; so while any
session holds a grant, each one not heard from for half an interval is pinged every
``liveness_interval`` seconds, and a session that does not answer within the interval is
dropped. Dropping it reports its grants lost: the server may still hold them, but this
process can no longer prove it, and a lease must never be reported held when it may not be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

import asyncpg

from agentlocks.errors import BackendError

from ._pg_connection import Session
from ._pg_session import Sessions

logger = logging.getLogger("agentlocks")

_DRIVER_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Liveness:
    """The periodic check, running only while some session holds a grant."""

    def __init__(self, sessions: Sessions, ping_sql: str, interval: float) -> None:
        self._sessions = sessions
        self._ping_sql = ping_sql
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def watch(self) -> None:
        """Make sure the check runs (called whenever a grant is recorded)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="agentlocks-pg-liveness"
            )

    async def _run(self) -> None:
        while any(s.grants for s in self._sessions.sessions()):
            await asyncio.sleep(self._interval)
            await self.check(s for s in self._sessions.sessions() if s.grants)

    async def check(self, sessions: Iterable[Session]) -> None:
        """Ping each session not heard from lately; drop the ones that do not answer."""
        now = time.monotonic()
        stale = {s for s in sessions if not s.dead and now - s.last_ok >= self._interval / 2}
        await asyncio.gather(*(self._ping(s) for s in stale))

    async def _ping(self, session: Session) -> None:
        task = session.submit(self._ping_sql)
        task.add_done_callback(_retrieve)
        try:
            # Not cancelled on timeout (see Session.submit): the session is dropped instead.
            row = await asyncio.wait_for(asyncio.shield(task), self._interval)
            session.check_pid(row[0])
        except (TimeoutError, BackendError, *_DRIVER_ERRORS) as exc:
            if not session.dead:
                logger.warning("dropping PostgreSQL session pid=%s: %r", session.pid, exc)
                self._sessions.kill(session)  # its termination reports the grants lost

    async def aclose(self) -> None:
        """Stop the check."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark a ping's outcome seen (it may fail after its session was dropped)."""
    if not task.cancelled():
        task.exception()
