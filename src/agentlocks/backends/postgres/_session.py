"""Sessions of the PostgreSQL backend: connections, their roles, and how they end.

A session-level advisory lock belongs to the server session (connection) that took it, so
connections are not interchangeable here as they are in an ordinary pool. Each
:class:`Session` records the grants whose locks it holds. Two roles:

* **shared sessions** (at most ``pool_size``) run short statements that never wait in the
  server: fast-path acquires (``pg_try_advisory_lock``), releases, ``inspect``. Statements
  are serialised per connection (asyncpg runs one at a time), and under load the hottest
  ones are coalesced into one statement (``postgres/_batch.py``); any number of grants live on
  one shared session.
* **spare sessions** run one blocking statement: a request waiting in the server's lock
  queue. A spare holds nothing when it starts waiting; if the wait is granted the grant
  stays on it (it is *pinned*) until released, and the clean spare goes back to the idle list.

Invariant: a session that holds a lock never runs a statement that can wait in the server,
so a release is never stuck behind a wait. A session is handed back to a user-supplied
pool only when it holds nothing (asyncpg's reset also runs ``pg_advisory_unlock_all``).
When a connection ends for any reason the server has released its locks; the
``on_dead`` callback then reports every grant it held as lost.

Server-side leases and the borrowed pool's rules: ``docs/backends.md``, "PostgreSQL". A
borrowed pool (``connect(postgres=pool)``) gets at most half of its ``max_size``
(``pool_size`` and ``max_spares`` shrink to fit), is waited for when exhausted (bounded by
the caller's timeout), and gets connections back once unused for ``IDLE_LINGER`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from agentlocks._tasks import TaskSupervisor, finish
from agentlocks.errors import BackendError

from ._connect import IDLE_TIMEOUT, lease_setting, reset_sql, setup_sql
from ._connection import Session
from ._errors import DRIVER_ERRORS, ErrorBoundary, ServerFull
from ._spares import SpareBudget
from ._sql import Sql

T = TypeVar("T")

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
        errors: ErrorBoundary,
        pool: Any,
        sql: Sql,
        pool_size: int,
        max_idle: int,
        max_spares: int,
        spare_patience: float,
        connect_timeout: float,
        application_name: str,
        on_dead: Callable[[Session], None],
        tasks: TaskSupervisor,
        lease_ttl: float,
        answer_within: float,
    ) -> None:
        self._dsn = dsn
        self.errors = errors  # the error boundary every statement of this backend runs in
        self._pool = pool
        self._sql = sql
        self._tasks = tasks
        self.lease_ttl = lease_ttl  # a shared session's server-side lease
        # Seconds a scrub may take before its connection is dropped (``liveness_interval``).
        self._answer_within = answer_within
        if pool is not None:
            # Borrowed, not taken: keep at most half of the pool, so the application's
            # own queries always find a connection while locks are held.
            room = max(1, _pool_max_size(pool) // 2)
            pool_size = min(pool_size, max(1, room // 2))
            max_spares = min(max_spares, max(1, room - pool_size))
            max_idle = 0  # idle spares go back to the pool after IDLE_LINGER
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
        self.on_open: Callable[[], None] | None = None  # a session opened (liveness)

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

    async def _connect(self, then: Callable[[Any], Awaitable[T]]) -> T:
        """A new connection (direct), or one borrowed from the pool, passed to ``then``.

        A borrowed pool that is exhausted is waited for (FIFO in asyncpg's pool), bounded
        by the caller's own timeout, not failed after ``connect_timeout``: its connections
        are the application's, and come back. The rest runs under ``finish`` (asyncpg's
        connect leaks its socket if cancelled half-way); if the caller was cancelled
        meanwhile, ``then``'s result is handed to ``keep`` instead of being lost.
        """
        if self._closed:
            raise BackendError("the PostgreSQL backend is closed")
        borrowed = None
        if self._pool is not None:
            with self.errors.map_driver_errors("borrowing a connection from the pool of"):
                borrowed = await self._pool.acquire()
        made: list[T] = []

        async def step() -> None:
            conn = borrowed if borrowed is not None else await self._connect_direct()
            try:
                if not self._bootstrapped:
                    await self._bootstrap_tokens(conn)
                    self._bootstrapped = True
            except BaseException:
                await self._close_conn(conn)
                raise
            made.append(await then(conn))

        try:
            await finish(step())
        except asyncio.CancelledError:
            if made:
                await finish(self._keep(made[0]))
            raise
        return made[0]

    async def _keep(self, made: object) -> None:
        """What a cancelled caller opened: kept for the next caller (closed once closed)."""
        if isinstance(made, Session):
            if self._closed:
                await self.close(made)
            elif made.shared:
                self._shared.append(made)
            else:
                await self.give_back(made)
        else:
            await self._close_conn(made)

    async def _connect_direct(self) -> Any:
        with self.errors.map_driver_errors("connecting to"):
            try:
                async with asyncio.timeout(self._connect_timeout):
                    return await asyncpg.connect(
                        self._dsn,
                        timeout=self._connect_timeout,
                        server_settings={"application_name": self._application_name},
                    )
            except asyncpg.TooManyConnectionsError as exc:
                text = self.errors.error(exc, "connecting to")
                raise ServerFull(f"{text} (no connection slot free on the server)") from exc

    async def _bootstrap_tokens(self, conn: Any) -> None:
        sql = self._sql
        with self.errors.map_driver_errors(f"looking for schema {sql.schema!r} on"):
            if not await conn.fetchval(sql.schema_exists, sql.schema):
                await self._bootstrap(conn, sql.schema, sql.bootstrap_schema, sql.schema_exists)
        await self._bootstrap(conn, sql.sequence, sql.bootstrap_sequence)

    async def _bootstrap(self, conn: Any, name: str, ddl: str, exists: str | None = None) -> None:
        """Create a schema, sequence or table on first use; concurrent creators serialise."""
        with self.errors.map_driver_errors(f"creating {name} on"):
            if await conn.fetchval(exists or self._sql.exists, name):
                return
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _BOOTSTRAP_KEY)
                await conn.execute(ddl)

    async def ensure_table(self, session: Session) -> None:
        """Create the generation table on first use (never cut short: see Session.run)."""
        if self._table_ready:
            return

        async def create() -> None:
            async with session.lock:
                await self._bootstrap(session.conn, self._sql.table, self._sql.bootstrap_table)

        await finish(create())
        self._table_ready = True

    async def _open(self, shared: bool) -> Session:
        """Open and configure a session; a cancelled caller leaves it for the next one."""
        session = await self._connect(lambda conn: self._configure(conn, shared))
        if self._closed:  # aclose() ran while it was being opened: it missed this one
            await self.close(session)
            raise BackendError("the PostgreSQL backend is closed")
        return session

    async def _configure(self, conn: Any, shared: bool) -> Session:
        # Settings: postgres/_connect.py. A shared session carries its server-side lease
        # (lease_ttl) from the start; a spare only with a grant or a semaphore's gate.
        guc = lease_setting(conn.get_server_version())
        idle = self.lease_ttl if shared else 0.0
        with self.errors.map_driver_errors("configuring a session on"):
            try:
                pid = await conn.fetchval(setup_sql(guc, shared, idle))
            except DRIVER_ERRORS:
                await self._close_conn(conn)
                raise
        session = Session(conn, shared, pid, self._sql, self._tasks, idle, guc)
        self._all[session.pid] = session
        session.on_close = lambda _conn: self._terminated(session)
        conn.add_termination_listener(session.on_close)
        if self.on_open is not None:
            self.on_open()
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
        if self._pool is not None and not self._tasks.closed:
            # The pool still counts the connection as ours until it is released.
            self._tasks.spawn(self._close_conn(session.conn, session), name="postgres give back")
        self._on_dead(session)

    async def _close_conn(self, conn: Any, session: Session | None = None) -> None:
        """Close a connection, or give a borrowed one back to its pool (as it found it)."""
        if session is not None and session.on_close is not None:
            conn.remove_termination_listener(session.on_close)
            session.on_close = None
        try:
            if self._pool is not None:
                if not conn.is_closed():
                    guc = session.guc if session is not None else IDLE_TIMEOUT
                    await asyncio.wait_for(conn.execute(reset_sql(guc)), 2.0)
                await self._pool.release(conn)
            else:
                await asyncio.wait_for(conn.close(), 2.0)
        except Exception:
            conn.terminate()
            if self._pool is not None:
                with contextlib.suppress(Exception):
                    await self._pool.release(conn)

    async def close(self, session: Session) -> None:
        """Close a session on purpose. Grants still on it are lost (and reported)."""
        if session.coalescer is not None:
            session.coalescer.close()
        session.closing = not session.grants
        if session.closing:
            session.dead = True  # gone for every user (published ticket bits included)
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
        await finish(self._close_conn(session.conn, session))

    async def server_state(self, session: Session) -> str | None:
        """``pg_stat_activity.state`` of ``session``'s server process, asked elsewhere.

        On an idle shared session other than ``session``, or else on a connection opened
        (or borrowed) for the question and closed again. None: the server has no such
        process. Unbounded by itself: the caller bounds the wait (``Liveness``).
        """
        sql = self._sql.backend_state
        other = next(
            (s for s in self._shared if s is not session and not s.dead and s.pending == 0),
            None,
        )
        if other is not None:
            row = await other.run(sql, session.pid)
            return None if row is None else str(row[0])
        if self._pool is not None:
            conn = await self._pool.acquire()
        else:
            conn = await self._connect_direct()
        try:
            state = await conn.fetchval(sql, session.pid)
        finally:
            await self._close_conn(conn)
        return None if state is None else str(state)

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
        """A clean session for one blocking wait, within the budget (``postgres/_spares.py``).

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
            self._reaper = self._tasks.spawn(self._reap(), name="postgres idle spares")

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

    async def give_back_unused(self) -> None:
        """Give a borrowed pool back the shared sessions unused for IDLE_LINGER seconds.

        Called by the liveness loop.
        """
        if self._pool is None:
            return
        now = time.monotonic()
        for session in sorted(self._shared, key=lambda s: s.last_ok):
            unused = not session.grants and session.pending == 0
            if unused and now - session.last_ok >= IDLE_LINGER:
                await self.close(session)

    async def scrub(self, session: Session) -> None:
        """Make a spare whose wait was interrupted clean again, or close it.

        Its statement may have taken the gate, or even the whole grant (a grant that raced
        the cancellation): ``pg_advisory_unlock_all`` releases all of it, handing the lock
        on to the next waiter. A late cancel request may hit this statement; one retry.

        Bounded: a connection cut off silently (a partition) never answers the cancelled
        wait nor this statement, so past ``liveness_interval`` it is dropped instead, and a
        request that timed out or was cancelled ends on time. What the spare held then
        goes with the server session (its server-side lease, or the server noticing).
        """
        timer = asyncio.get_running_loop().call_later(self._answer_within, self.kill, session)
        try:
            for _ in range(2):
                try:
                    await session.run(self._sql.unlock_all, session.guc)
                except asyncpg.QueryCanceledError:
                    continue
                except Exception:  # driver errors, and asyncpg's own confusion after a cancel
                    break
                timer.cancel()
                await self.give_back(session)
                return
        finally:
            timer.cancel()
        session.closing = True
        await self.close(session)

    # -- LISTEN/NOTIFY (semaphores) --------------------------------------------------------

    async def listen(self, channel: str, callback: Callable[..., None]) -> None:
        """Deliver NOTIFYs on ``channel`` to ``callback`` (one listener connection)."""
        async with self._listener_lock:
            if self._listener is None or self._listener.is_closed():
                self._listener = await self._connect(_as_is)
            listener = self._listener
            with self.errors.map_driver_errors("listening on"):
                await self._bounded(listener, listener.add_listener(channel, callback))

    async def unlisten(self, channel: str, callback: Callable[..., None]) -> None:
        """Stop delivering ``channel`` to ``callback``."""
        async with self._listener_lock:
            listener = self._listener
            if listener is not None and not listener.is_closed():
                with contextlib.suppress(*DRIVER_ERRORS):
                    await self._bounded(listener, listener.remove_listener(channel, callback))

    async def _bounded(self, listener: Any, step: Awaitable[object]) -> None:
        """Run a LISTEN or UNLISTEN; a listener silent past ``liveness_interval`` is dropped.

        A silent partition would otherwise hold the listener lock, and every semaphore
        head leaving its gate behind it, for good. Dropping it fails ``step`` at once;
        the next ``listen`` connects again, and heads still listening on the dropped one
        notice releases within ``liveness_interval`` (they re-try that often anyway).
        """
        timer = asyncio.get_running_loop().call_later(self._answer_within, listener.terminate)
        try:
            await step
        finally:
            timer.cancel()

    async def aclose(self) -> None:
        """Close every connection (the server releases whatever they still held)."""
        self._closed = True
        for session in list(self._all.values()):
            await self.close(session)
        if self._listener is not None:
            await finish(self._close_conn(self._listener))
            self._listener = None


def _pool_max_size(pool: Any) -> int:
    """The borrowed pool's ``max_size`` (asyncpg ``Pool.get_max_size``; 10 if unknown)."""
    get = getattr(pool, "get_max_size", None)
    size = get() if callable(get) else None
    return size if isinstance(size, int) and size > 0 else 10


async def _as_is(conn: Any) -> Any:
    return conn
