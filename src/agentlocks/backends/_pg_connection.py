"""One PostgreSQL connection of the backend (:class:`Session`), and task helpers.

A session-level advisory lock belongs to the server session (connection) that took it, so a
:class:`Session` records the grants whose locks it holds, and its statements run in tasks
of their own (``submit``) so that a cancelled caller never cuts a lock statement short.
``drain`` and ``finish`` are the two ways a cancellation path waits for such a task.
``Sessions`` (``_pg_session.py``) opens, lends and closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

from agentlocks.errors import BackendError

from ._base import Grant
from ._pg_batch import Coalescer
from ._pg_sql import Sql

T = TypeVar("T")


class PgBouncerDetected(BackendError):
    """The backend pid changed between statements on one connection (a pooler)."""


class ServerFull(BackendError):
    """The server refused a connection: ``max_connections`` or the role's limit reached."""


class Session:
    """One connection and the grants whose advisory locks it holds."""

    __slots__ = (
        "closing", "coalescer", "conn", "dead", "grants", "last_ok", "lock", "on_close",
        "pending", "pid", "shared",
    )  # fmt: skip

    def __init__(self, conn: Any, shared: bool, pid: int, sql: Sql | None = None) -> None:
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
        self.last_ok = time.monotonic()
        self.on_close: Callable[[Any], None] | None = None
        # Shared sessions coalesce their queued fast paths and releases (``_pg_batch.py``).
        self.coalescer = Coalescer(self, sql) if shared and sql is not None else None

    def __repr__(self) -> str:
        role = "shared" if self.shared else "spare"
        return f"Session(pid={self.pid}, {role}, grants={len(self.grants)}, dead={self.dead})"

    async def run(self, sql: str, *args: object) -> Any:
        """Run one statement (serialised on this connection); return its first row.

        The statement runs in a task of its own and a cancelled caller waits for it: a
        statement is never cut short on the server (see ``submit``).
        """
        task = self.submit(sql, *args)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await drain(task)
            raise

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        """Run one statement (serialised on this connection); return all its rows."""
        task = asyncio.get_running_loop().create_task(self._execute(sql, args, True))
        try:
            rows: list[Any] = await asyncio.shield(task)
        except asyncio.CancelledError:
            await drain(task)
            raise
        return rows

    def submit(self, sql: str, *args: object) -> asyncio.Task[Any]:
        """Run the statement in a task of its own, so a cancelled caller cannot cut it short.

        Cancelling a statement makes asyncpg send the server a cancel request, which can
        land on a *later* statement of the same connection; a lock statement cut short
        half way leaves locks that nobody owns. So only the backend itself cancels a
        statement, and only a spare's wait (after which the spare is scrubbed).
        """
        return asyncio.get_running_loop().create_task(self._execute(sql, args, False))

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


def driver_dsn(url: str, ours: frozenset[str]) -> str:
    """Strip agentlocks' own options from the URL query; asyncpg gets the rest."""
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme.lower() in ("postgres", "postgresql") else parts.scheme
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(query)))


async def drain(task: asyncio.Future[Any]) -> Any:
    """Wait for ``task`` even if the caller is cancelled; return its result or None.

    Used on cancellation paths: the statement must finish (and be undone) before the
    caller's cancellation propagates, or a lock could outlive its request.
    """
    with anyio.CancelScope(shield=True):
        while not task.done():
            # A native task.cancel() is not stopped by anyio's shield; the caller re-raises
            # its cancellation once cleanup is done, so a repeat can be ignored here.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((task,))
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()


async def finish(coro: Coroutine[Any, Any, T]) -> T:
    """Run a cleanup step to its end even if the caller is cancelled meanwhile.

    The step runs in a task of its own; once it is done, a cancellation that arrived
    while waiting is raised again (after the step, never instead of it).
    """
    task = asyncio.get_running_loop().create_task(coro)
    cancelled = False
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError:
                cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # seen: the cancellation is what the caller gets
        raise asyncio.CancelledError
    return task.result()
