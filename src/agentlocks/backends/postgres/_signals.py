"""Signals to lock holders on PostgreSQL: ``Backend.signal`` / ``watch_signals`` / ``clear_signal``.

Records. One row per (namespace, resource, kind) in ``agentlocks_signals`` (created on
first use, in the backend's schema): the highest mark sent and when the record expires.
A fresh mark is ``nextval`` of the token sequence every grant draws from, so it is greater
than every token granted before and smaller than every token granted after (per database,
which is more than per key). Rows do not expire by themselves on PostgreSQL: readers skip
expired rows, and every ``signal`` and ``clear_signal`` statement deletes the expired rows
it finds, so the table only holds the signals of the last ``ttl`` seconds (plus those sent
since the last write, if writes stop).

Push. The same statement that upserts the row sends ``pg_notify`` on one channel per
namespace, ``"<kind> <mark> <resource>"`` (NOTIFY is delivered at commit, and the
statement commits on its own). Each backend that watches anything keeps one LISTEN
connection, opened on the first watch and closed ``LINGER`` seconds after the last one
ends (a borrowed pool gets it back when no run is watching).

Missed messages. A watch reads the record after its LISTEN is in place, so a signal sent
before the watch started is found in the table and one sent after is notified. If the
LISTEN connection dies, it is reopened (with back-off) while watches remain, and every
watched record is read again: deliveries may repeat; watches are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

from agentlocks._tasks import TaskSupervisor, finish, settle
from agentlocks.backends._base import SignalCallback, deliver_safely

from ._errors import DRIVER_ERRORS
from ._session import Sessions
from ._sql import Sql

__all__ = ["PgSignals"]

logger = logging.getLogger("agentlocks")

#: Seconds the LISTEN connection stays open after the last watch ended (reused meanwhile).
LINGER: Final = 5.0
#: Seconds between attempts to reopen a lost LISTEN connection: first, and at most.
RECONNECT_DELAY: Final = (0.05, 1.0)


class _Statements:
    """The SQL of the signals, with the schema-qualified names filled in."""

    def __init__(self, sql: Sql) -> None:
        prefix = sql.sequence[: -len("agentlocks_tokens")]
        self.table = prefix + "agentlocks_signals"
        seq = sql.sequence.replace("'", "''")
        self.bootstrap = (
            f"CREATE TABLE IF NOT EXISTS {self.table} (namespace text NOT NULL,"
            " resource text NOT NULL, kind text NOT NULL, mark bigint NOT NULL,"
            " expires_at timestamptz NOT NULL, PRIMARY KEY (namespace, resource, kind))"
        )
        # $1 namespace, $2 resource, $3 kind, $4 mark to reuse or NULL, $5 ttl (s),
        # $6 channel. COALESCE evaluates nextval only without a mark. The purge skips this
        # resource's rows: the upsert may update them, and one statement must not both.
        self.send = (
            f"WITH m AS MATERIALIZED (SELECT coalesce($4::bigint, nextval('{seq}')) AS mark),"
            f" p AS (DELETE FROM {self.table} WHERE expires_at < now()"
            " AND NOT (namespace = $1 AND resource = $2)),"
            f" u AS (INSERT INTO {self.table} AS s (namespace, resource, kind, mark, expires_at)"
            " SELECT $1, $2, $3, mark, now() + make_interval(secs => $5::float8) FROM m"
            " ON CONFLICT (namespace, resource, kind) DO UPDATE SET"
            " mark = GREATEST(s.mark, EXCLUDED.mark),"
            " expires_at = GREATEST(s.expires_at, EXCLUDED.expires_at) RETURNING 1)"
            " SELECT mark, pg_notify($6, $3 || ' ' || mark::text || ' ' || $2),"
            " (SELECT count(*) FROM u) FROM m"
        )
        self.read = (
            f"SELECT resource, kind, mark FROM {self.table} WHERE namespace = $1"
            " AND resource = ANY($2::text[]) AND expires_at > now()"
        )
        self.clear = (
            f"DELETE FROM {self.table} WHERE (namespace = $1 AND resource = $2 AND kind = $3"
            " AND mark = $4) OR expires_at < now()"
        )


class PgSignals:
    """The signals of one PostgreSQL backend (see the module docstring)."""

    def __init__(self, sessions: Sessions, sql: Sql, namespace: str, tasks: TaskSupervisor) -> None:
        self._sessions = sessions
        self._tasks = tasks
        self._sql = _Statements(sql)
        self._namespace = namespace
        digest = hashlib.blake2b(namespace.encode(), digest_size=8).hexdigest()
        self._channel = f"agentlocks_signals_{digest}"
        self._watched: dict[str, list[SignalCallback]] = {}
        self._table_ready = False
        self._listener: Any = None
        self._listen_lock = asyncio.Lock()
        self._linger: asyncio.TimerHandle | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = False

    # -- statements --------------------------------------------------------------------------

    async def _run(self, sql: str, *args: object, rows: bool = False) -> Any:
        session = await self._sessions.shared()
        with self._sessions.errors.map_driver_errors("signalling on"):
            if not self._table_ready:
                await self._ensure_table(session.conn, session.lock)
            if rows:
                return await session.fetch(sql, *args)
            return await session.run(sql, *args)

    async def _ensure_table(self, conn: Any, lock: asyncio.Lock) -> None:
        async def create() -> None:
            async with lock:
                await self._sessions._bootstrap(conn, self._sql.table, self._sql.bootstrap)

        # Never cut short, like every statement of a shared session.
        await finish(create())
        self._table_ready = True

    async def send(self, resource: str, kind: str, ttl: float, mark: int | None) -> int:
        """``Backend.signal``: one statement (upsert, purge, notify)."""
        row = await self._run(
            self._sql.send, self._namespace, resource, kind, mark, float(ttl), self._channel
        )
        return int(row[0])

    async def clear(self, resource: str, kind: str, mark: int) -> None:
        """``Backend.clear_signal``: one statement (also purges expired rows)."""
        await self._run(self._sql.clear, self._namespace, resource, kind, mark)

    # -- watches -----------------------------------------------------------------------------

    def watch(self, resource: str, deliver: SignalCallback) -> AbstractAsyncContextManager[None]:
        """``Backend.watch_signals``."""
        return self._watch(resource, deliver)

    @asynccontextmanager
    async def _watch(self, resource: str, deliver: SignalCallback) -> AsyncIterator[None]:
        # Registered before LISTEN and the read: a notification that arrives while the read
        # is in flight is delivered too (twice at worst), never lost.
        self._watched.setdefault(resource, []).append(deliver)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        try:
            await self._listening()  # in place before the read, or a signal could fall between
            for row in await self._run(self._sql.read, self._namespace, [resource], rows=True):
                deliver_safely(deliver, row[1], int(row[2]))
            yield
        finally:
            callbacks = self._watched[resource]
            callbacks.remove(deliver)
            if not callbacks:
                del self._watched[resource]
            if not self._watched and not self._closed and self._linger is None:
                self._linger = asyncio.get_running_loop().call_later(LINGER, self._idle)

    async def _listening(self) -> None:
        async with self._listen_lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            conn = await self._sessions._connect(_as_is)
            with self._sessions.errors.map_driver_errors("listening on"):
                try:
                    await conn.add_listener(self._channel, self._notified)
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.terminate()
                    raise
            conn.add_termination_listener(self._lost)
            self._listener = conn

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        kind, mark, resource = payload.split(" ", 2)
        for deliver in list(self._watched.get(resource, ())):
            deliver_safely(deliver, kind, int(mark))

    def _lost(self, conn: Any) -> None:
        # The LISTEN connection ended under us: notifications sent from now on are lost
        # until it is reopened, so reopen it and read every watched record again.
        if conn is not self._listener:
            return
        self._listener = None
        wanted = self._watched and not self._closed and not self._tasks.closed
        if wanted and self._reconnect is None:
            logger.warning("PostgreSQL LISTEN connection for signals lost; reconnecting")
            self._reconnect = self._tasks.spawn(self._restore(), name="pg signals listen")

    async def _restore(self) -> None:
        delay, longest = RECONNECT_DELAY
        try:
            while self._watched and not self._closed:
                try:
                    await self._listening()
                    resources = list(self._watched)
                    rows = await self._run(self._sql.read, self._namespace, resources, rows=True)
                except Exception as exc:
                    logger.warning("signals: reconnection failed: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, longest)
                    continue
                for row in rows:
                    for deliver in list(self._watched.get(row[0], ())):
                        deliver_safely(deliver, row[1], int(row[2]))
                return
        finally:
            self._reconnect = None

    def _idle(self) -> None:
        self._linger = None
        if not self._watched and self._listener is not None:
            conn, self._listener = self._listener, None
            if self._tasks.closed:
                conn.terminate()
            else:
                self._closing = self._tasks.spawn(self._close(conn), name="pg signals unlisten")

    async def _close(self, conn: Any) -> None:
        conn.remove_termination_listener(self._lost)
        with contextlib.suppress(*DRIVER_ERRORS):
            await conn.remove_listener(self._channel, self._notified)
        await self._sessions._close_conn(conn)

    async def aclose(self) -> None:
        """Close the LISTEN connection and stop reconnecting."""
        self._closed = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        if self._listener is not None:
            conn, self._listener = self._listener, None
            await self._close(conn)
        if self._closing is not None:
            await settle(self._closing)


async def _as_is(conn: Any) -> Any:
    """``Sessions._connect``'s ``then`` for a connection used as it is (the listener)."""
    return conn
