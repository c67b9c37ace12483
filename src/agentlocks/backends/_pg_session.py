"""Sessions of the PostgreSQL backend: connections, their roles, and how they end.

A session-level advisory lock belongs to the server session (connection) that took it, so
connections are not interchangeable here as they are in an ordinary pool. Each
:class:`Session` records the grants whose locks it holds. Two roles:

* **shared sessions** (at most ``pool_size``) run short statements that never wait in the
  server: fast-path acquires (``pg_try_advisory_lock``), releases, ``inspect``. Statements
  are serialised per connection (asyncpg runs one at a time), and under load the hottest
  ones are coalesced into one statement (``_pg_batch.py``); any number of grants live on
  one shared session.
* **spare sessions** run one blocking statement: a request waiting in the server's lock
  queue. A spare holds nothing when it starts waiting; if the wait is granted the grant
  stays on it (it is *pinned*) until released, and the clean spare goes back to the idle list.

Invariant: a session that holds a lock never runs a statement that can wait in the server,
so a release is never stuck behind a wait. A session is handed back to a user-supplied
pool only when it holds nothing (asyncpg's reset also runs ``pg_advisory_unlock_all``).
When a connection ends for any reason the server has released its locks; the
``on_dead`` callback then reports every grant it held as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg

from agentlocks.errors import BackendError

from ._pg_connection import ServerFull, Session, drain
from ._pg_spares import SpareBudget
from ._pg_sql import Sql

#: Advisory key serialising the creation of the token sequence and the generation table.
_BOOTSTRAP_KEY = 0x61676E746C6B73  # "agntlks"
#: Seconds an idle spare beyond ``max_idle`` is kept for reuse before it is closed.
IDLE_LINGER = 5.0


class Sessions:
    """Opens, lends and closes the sessions of one backend instance."""

    def __init__(
        self,
        *,
        dsn: str,
        redacted: str,
        password: str | None,
        pool: Any,
        sql: Sql,
        pool_size: int,
        max_idle: int,
        max_spares: int,
        spare_patience: float,
        connect_timeout: float,
        application_name: str,
        on_dead: Callable[[Session], None],
    ) -> None:
        self._dsn = dsn
        self._redacted = redacted
        self._password = password
        self._pool = pool
        self._sql = sql
        self._pool_size = pool_size
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self._on_dead = on_dead
        self._shared: list[Session] = []
        self._opening_shared = 0
        self._shared_changed = asyncio.Event()
        self._idle: deque[Session] = deque()
        self._reaper: asyncio.Task[None] | None = None
        self._lent: set[Session] = set()  # spares out for a wait or holding its grant
        self._budget = SpareBudget(max_spares, spare_patience)
        self._all: dict[int, Session] = {}  # pid -> session, every open session
        self._listener: Any = None
        self._listener_lock = asyncio.Lock()
        self._bootstrapped = False
        self._table_ready = False
        self._closed = False

    def __len__(self) -> int:
        return len(self._all) + (self._listener is not None)

    @property
    def pids(self) -> frozenset[int]:
        """Server pids of every session this backend has open."""
        return frozenset(self._all)

    def sessions(self) -> list[Session]:
        """Every open session."""
        return list(self._all.values())

    # -- opening ---------------------------------------------------------------------------

    def error(self, exc: BaseException, doing: str) -> BackendError:
        """``exc`` as a BackendError; the message never holds the password."""
        if isinstance(
            exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
        ):
            return BackendError(f"authentication failed {doing} {self._redacted}")
        text = str(exc) or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return BackendError(f"PostgreSQL error {doing} {self._redacted}: {text}")

    async def _connect(self) -> Any:
        if self._closed:
            raise BackendError("the PostgreSQL backend is closed")
        try:
            with anyio.fail_after(self._connect_timeout):
                if self._pool is not None:
                    conn = await self._pool.acquire()
                else:
                    conn = await asyncpg.connect(
                        self._dsn,
                        timeout=self._connect_timeout,
                        server_settings={"application_name": self._application_name},
                    )
        except asyncpg.TooManyConnectionsError as exc:
            text = self.error(exc, "connecting to")
            raise ServerFull(f"{text} (no connection slot free on the server)") from exc
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self.error(exc, "connecting to") from exc
        try:
            if not self._bootstrapped:
                await self._bootstrap(conn, self._sql.sequence, self._sql.bootstrap_sequence)
                self._bootstrapped = True
        except BaseException:
            await self._close_conn(conn)
            raise
        return conn

    async def _bootstrap(self, conn: Any, name: str, ddl: str) -> None:
        """Create a sequence or table on first use; concurrent creators serialise."""
        try:
            if await conn.fetchval(self._sql.exists, name):
                return
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _BOOTSTRAP_KEY)
                await conn.execute(ddl)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self.error(exc, f"creating {name} on") from exc

    async def ensure_table(self, session: Session) -> None:
        """Create the generation table on first use (never cut short: see Session.submit)."""
        if self._table_ready:
            return

        async def create() -> None:
            async with session.lock:
                await self._bootstrap(session.conn, self._sql.table, self._sql.bootstrap_table)

        task = asyncio.get_running_loop().create_task(create())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await drain(task)
            raise
        self._table_ready = True

    async def _open(self, shared: bool) -> Session:
        """Open a session; a cancelled caller does not leave a half-open connection.

        (asyncpg's ``connect`` leaks its socket if cancelled half-way, so the connection is
        made in a task of its own; if the caller is cancelled, the new session is kept.)
        """
        task = asyncio.get_running_loop().create_task(self._open_now(shared))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            session = await drain(task)
            if session is not None:
                with anyio.CancelScope(shield=True):
                    if shared:
                        self._shared.append(session)
                    else:
                        await self.give_back(session)
            raise

    async def _open_now(self, shared: bool) -> Session:
        conn = await self._connect()
        # Session settings a database default could set against us: a statement or lock
        # timeout would abort a legitimate wait, an idle-session timeout would drop a
        # session holding locks. A spare also asks the server to check its client every
        # second while it waits, so a waiter whose process vanished leaves the lock queue
        # instead of being granted a lock nobody will release until it next writes.
        settings = ["statement_timeout", "lock_timeout"]
        if conn.get_server_version() >= (14,):
            settings.append("idle_session_timeout")
        sql = ", ".join(f"set_config('{name}', '0', false)" for name in settings)
        if not shared and conn.get_server_version() >= (14,):
            sql += ", set_config('client_connection_check_interval', '1000', false)"
        try:
            pid = await conn.fetchval(f"SELECT pg_backend_pid(), {sql}")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self._close_conn(conn)
            raise self.error(exc, "configuring a session on") from exc
        session = Session(conn, shared, pid, self._sql)
        self._all[session.pid] = session
        session.on_close = lambda _conn: self._terminated(session)
        conn.add_termination_listener(session.on_close)
        return session

    def _terminated(self, session: Session) -> None:
        if session.coalescer is not None:
            session.coalescer.close()
        self._all.pop(session.pid, None)
        with contextlib.suppress(ValueError):
            self._shared.remove(session)
        with contextlib.suppress(ValueError):
            self._idle.remove(session)
        self._returned(session)
        if session.closing:
            return
        session.dead = True
        self._on_dead(session)

    async def _close_conn(self, conn: Any, session: Session | None = None) -> None:
        if session is not None and session.on_close is not None:
            conn.remove_termination_listener(session.on_close)
            session.on_close = None
        with anyio.CancelScope(shield=True):
            try:
                if self._pool is not None:
                    await self._pool.release(conn)
                else:
                    await asyncio.wait_for(conn.close(), 2.0)
            except Exception:
                conn.terminate()

    async def close(self, session: Session) -> None:
        """Close a session on purpose. Grants still on it are lost (and reported)."""
        if session.coalescer is not None:
            session.coalescer.close()
        session.closing = not session.grants
        self._all.pop(session.pid, None)
        with contextlib.suppress(ValueError):
            self._shared.remove(session)
        with contextlib.suppress(ValueError):
            self._idle.remove(session)
        self._returned(session)
        if session.grants:
            session.dead = True
            self._on_dead(session)
            session.closing = True
        await self._close_conn(session.conn, session)

    def kill(self, session: Session) -> None:
        """Drop a connection at once (its locks are released by the server)."""
        session.conn.terminate()

    # -- lending -------------------------------------------------------------------------------

    async def shared(self) -> Session:
        """A shared session for a statement that never waits in the server.

        The least busy one; a new one is opened while all are busy and fewer than
        ``pool_size`` exist (counting those being opened).
        """
        while True:
            best = min(self._shared, key=lambda s: s.pending, default=None)
            room = len(self._shared) + self._opening_shared < self._pool_size
            if best is not None and (best.pending == 0 or not room):
                return best
            if room:
                break
            changed = self._shared_changed  # every slot is being opened: wait for one
            await changed.wait()
        self._opening_shared += 1
        try:
            session = await self._open(shared=True)
        except ServerFull:
            if not self._shared:
                raise
            # The server has no slot for another one: make do with those open now.
            self._pool_size = len(self._shared)
            return min(self._shared, key=lambda s: s.pending)
        finally:
            self._opening_shared -= 1
            self._shared_changed.set()
            self._shared_changed = asyncio.Event()
        self._shared.append(session)
        return session

    async def spare(self, exempt: bool) -> Session:
        """A clean session for one blocking wait, within the budget (``_pg_spares.py``).

        ``exempt``: the caller's task holds a grant already, so it must not wait for the
        budget (that could deadlock); it may exceed it.
        """
        await self._budget.take(exempt)
        try:
            session = await self._spare_within_budget(exempt)
        except BaseException:
            self._budget.give()
            raise
        self._lent.add(session)
        return session

    async def _spare_within_budget(self, exempt: bool) -> Session:
        while True:
            while self._idle:
                session = self._idle.pop()
                if not session.dead:
                    return session
            try:
                return await self._open(shared=False)
            except ServerFull:
                # Wait for one of ours to come back, unless none can (nothing lent) or
                # the caller holds a grant (it could be what the lent ones wait for).
                if exempt or not self._lent:
                    raise
                await self._budget.take_again()

    def spare_free(self, exempt: bool) -> bool:
        """Would ``spare(exempt)`` lend a spare without queueing for the budget?"""
        return self._budget.free(exempt)

    def _returned(self, session: Session) -> None:
        """A lent spare is back (idle or closed): its place in the budget passes on."""
        if session in self._lent:
            self._lent.discard(session)
            self._budget.give()

    @property
    def spares_lent(self) -> int:
        """Spares out now (waiting in the server, or pinned by the grant they won)."""
        return len(self._lent)

    @property
    def spare_line(self) -> int:
        """Requests waiting for a spare (the budget is spent, or the server is full)."""
        return self._budget.waiting

    async def give_back(self, session: Session) -> None:
        """Return a clean spare (it holds nothing) for reuse, or close it."""
        assert not session.grants, "a session holding locks must never be reused"
        if session.dead:
            self._returned(session)
            return
        if self._closed:
            await self.close(session)
            return
        # Kept even past max_idle: a busy key reuses its spares instead of opening and
        # closing one per wait; the surplus is closed once it has idled IDLE_LINGER.
        self._idle.append(session)
        self._returned(session)  # after: the next in line finds it idle
        if len(self._idle) > self._max_idle and self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Close the idle spares beyond ``max_idle`` that stayed unused for IDLE_LINGER."""
        try:
            while len(self._idle) > self._max_idle:
                await asyncio.sleep(IDLE_LINGER)
                now = time.monotonic()
                # Oldest first: spare() reuses the most recently returned ones.
                while len(self._idle) > self._max_idle:
                    oldest = self._idle[0]
                    if now - oldest.last_ok < IDLE_LINGER:
                        break
                    await self.close(oldest)
        finally:
            self._reaper = None

    async def scrub(self, session: Session) -> None:
        """Make a spare whose wait was interrupted clean again, or close it.

        Its statement may have taken the gate, or even the whole grant (a grant that raced
        the cancellation): ``pg_advisory_unlock_all`` releases all of it, handing the lock
        on to the next waiter. A late cancel request may hit this statement; one retry.
        """
        for _ in range(2):
            try:
                await session.run(self._sql.unlock_all)
            except asyncpg.QueryCanceledError:
                continue
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                break
            await self.give_back(session)
            return
        session.closing = True
        await self.close(session)

    # -- LISTEN/NOTIFY (semaphores) --------------------------------------------------------

    async def listen(self, channel: str, callback: Callable[..., None]) -> None:
        """Deliver NOTIFYs on ``channel`` to ``callback`` (one listener connection)."""
        async with self._listener_lock:
            if self._listener is None or self._listener.is_closed():
                self._listener = await self._connect()
            try:
                await self._listener.add_listener(channel, callback)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise self.error(exc, "listening on") from exc

    async def unlisten(self, channel: str, callback: Callable[..., None]) -> None:
        """Stop delivering ``channel`` to ``callback``."""
        async with self._listener_lock:
            listener = self._listener
            if listener is not None and not listener.is_closed():
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await listener.remove_listener(channel, callback)

    async def aclose(self) -> None:
        """Close every connection (the server releases whatever they still held)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for session in list(self._all.values()):
            await self.close(session)
        if self._listener is not None:
            await self._close_conn(self._listener)
            self._listener = None
