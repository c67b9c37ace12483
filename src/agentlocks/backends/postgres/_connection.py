"""One PostgreSQL connection of the backend (:class:`Session`) and the grants it holds.

A session-level advisory lock belongs to the server session (connection) that took it, so
a :class:`Session` records the grants whose locks it holds, and its server-side lease
(``docs/backends.md``, "PostgreSQL"). ``Sessions`` (``postgres/_session.py``) opens, lends
and closes them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentlocks._tasks import finish
from agentlocks.backends._base import Grant

from ._batch import Coalescer
from ._connect import IDLE_TIMEOUT
from ._errors import PgBouncerDetected
from ._sql import Sql

if TYPE_CHECKING:
    from agentlocks._tasks import TaskSupervisor


class Session:
    """One connection and the grants whose advisory locks it holds."""

    __slots__ = (
        "closing", "coalescer", "confirmed_at", "conn", "dead", "gate_lease", "grants", "guc",
        "idle_timeout", "last_ok", "lock", "on_close", "pending", "pid", "pinging", "shared",
    )  # fmt: skip

    def __init__(
        self,
        conn: Any,
        shared: bool,
        pid: int,
        sql: Sql | None = None,
        tasks: TaskSupervisor | None = None,
        idle_timeout: float = 0.0,
        guc: str = IDLE_TIMEOUT,
    ) -> None:
        self.conn = conn
        # From ``pg_backend_pid()``, not the startup message: a pooler such as PgBouncer
        # hands out pids of its own there.
        self.pid = pid
        self.shared = shared
        self.lock = asyncio.Lock()
        self.pending = 0  # statements submitted and not finished (load balancing)
        self.grants: set[Grant] = set()
        self.dead = False
        self.closing = False  # we are closing it on purpose: not a loss
        self.last_ok = time.monotonic()  # when a statement last finished on it
        # When the server last said it was working for this session (``Liveness._watch``).
        self.confirmed_at = 0.0
        self.on_close: Callable[[Any], None] | None = None
        # The server-side lease (seconds of idleness after which the server ends the
        # session; 0: none) and the setting that holds it on this server.
        self.idle_timeout = idle_timeout
        self.guc = guc
        # The lease a semaphore's head needs while this spare holds the gate for it (0: not
        # a gatekeeper): the gate blocks the queue, so it is leased like a grant.
        self.gate_lease = 0.0
        self.pinging: Any = None  # the liveness ping in flight, if any
        # Shared sessions coalesce their queued fast paths and releases (``postgres/_batch.py``).
        self.coalescer = (
            Coalescer(self, sql, tasks)
            if shared and sql is not None and tasks is not None
            else None
        )

    def __repr__(self) -> str:
        role = "shared" if self.shared else "spare"
        return f"Session(pid={self.pid}, {role}, grants={len(self.grants)}, dead={self.dead})"

    async def run(self, sql: str, *args: object) -> Any:
        """Run one statement (serialised on this connection); return its first row.

        Never cut short by a cancelled caller (it runs under ``finish``): cancelling a
        statement makes asyncpg send the server a cancel request, which can land on a
        *later* statement of the same connection, and a lock statement cut short half way
        leaves locks that nobody owns. So only a spare's server-side wait is ever
        cancelled (``execute``), after which the spare is scrubbed.
        """
        return await finish(self._execute(sql, args, False))

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        """Run one statement like ``run``; return all its rows."""
        rows: list[Any] = await finish(self._execute(sql, args, True))
        return rows

    async def execute(self, sql: str, *args: object) -> Any:
        """Run one statement in the caller's task; return its first row.

        Cancellable: for a spare's wait in the server queue (its cancellation is sent to
        the server) and for statements already running under ``finish``.
        """
        return await self._execute(sql, args, False)

    async def _execute(self, sql: str, args: tuple[object, ...], all_rows: bool) -> Any:
        self.pending += 1
        try:
            async with self.lock:
                if all_rows:
                    result = await self.conn.fetch(sql, *args)
                else:
                    result = await self.conn.fetchrow(sql, *args)
        finally:
            self.pending -= 1
        self.last_ok = time.monotonic()
        return result

    def check_pid(self, pid: int) -> None:
        """Fail loudly if the statement ran in another server session than the first one."""
        if pid != self.pid:
            raise PgBouncerDetected(
                f"the PostgreSQL backend pid changed from {self.pid} to {pid} on one "
                "connection: a pooler in transaction or statement mode (PgBouncer) is in "
                "between, and session-level advisory locks cannot work through it; connect "
                "to PostgreSQL directly or use session pooling"
            )
