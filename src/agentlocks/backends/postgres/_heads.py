"""Head records of ``postgres://`` (the ``HeadStore`` methods of ``_capabilities.py``).

One row per ``(namespace, resource, field)`` in ``agentlocks_heads`` (created on first use,
beside the generation table, in the same schema). ``swap_head`` is one statement on a shared
session (``Sql.swap_head``): it locks the row, compares head and fence, and upserts, so
concurrent swaps of one record serialise on its row lock and each sees the previous one's
result. Rows expire (``expires_at``); an expired row is treated as absent at once and
deleted by a sweep that every backend runs after each ``SWEEP_EVERY`` swaps, at most 500
rows at a time (``Sql.sweep_heads``): enough to keep up, since a swap adds at most one row.
"""

from __future__ import annotations

from typing import Final

from agentlocks._tasks import finish
from agentlocks.backends._capabilities import HeadSwap

from ._connection import Session
from ._session import Sessions
from ._sql import Sql

__all__ = ["PgHeads"]

#: A backend sweeps expired head rows after this many swaps (and at its first).
SWEEP_EVERY: Final = 256


class PgHeads:
    """The head records of one PostgreSQL backend."""

    def __init__(
        self,
        sessions: Sessions,
        sql: Sql,
        namespace: str,
    ) -> None:
        self._sessions = sessions
        self._sql = sql
        self._namespace = namespace
        self._mapped = sessions.errors.map_driver_errors()  # the error boundary
        self._ready = False
        self._swaps = 0

    async def swap(
        self, resource: str, field: str, expected: str | None, new: str, token: int | None,
        ttl: float,
    ) -> HeadSwap:  # fmt: skip
        session = await self._session()
        with self._mapped:
            swapped, head, stored, age = await session.run(
                self._sql.swap_head, self._namespace, resource, field, expected, new, token,
                float(ttl),
            )  # fmt: skip
            if self._swaps % SWEEP_EVERY == 0:
                await session.run(self._sql.sweep_heads)
            self._swaps += 1
        head = head or ""
        if swapped:
            return HeadSwap("swapped", head, stored, age)
        if token is not None and stored is not None and stored > token:
            return HeadSwap("fenced", head, stored, age)
        return HeadSwap("conflict", head, stored, age)

    async def drop(self, resource: str) -> None:
        session = await self._session()
        with self._mapped:
            await session.run(self._sql.drop_heads, self._namespace, resource)

    async def _session(self) -> Session:
        session = await self._sessions.shared()
        if not self._ready:
            await self._create(session)
            self._ready = True
        return session

    async def _create(self, session: Session) -> None:
        """Create the table on first use; never cut short (as ``Sessions.ensure_table``)."""

        async def create() -> None:
            async with session.lock:
                await self._sessions._bootstrap(
                    session.conn, self._sql.heads, self._sql.bootstrap_heads
                )

        await finish(create())
