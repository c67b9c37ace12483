"""Liveness checks and server-side leases of the PostgreSQL sessions.

A connection that ends is noticed at once (asyncpg's termination callback). One that
silently stops answering (a network partition, a frozen server) is not; so each session
holding a grant and not heard from for half an interval is pinged every
``liveness_interval`` seconds, and a session that does not answer within the interval is
dropped. Dropping it reports its grants lost: the server may still hold them, but this
process can no longer prove it, and a lease must never be reported held when it may not be.

The same pings carry each session's *server-side lease* (``idle_session_timeout``; why and
what it bounds: ``docs/backends.md``, "PostgreSQL"). Every session with a lease is pinged a
third of the lease after its last answer, whether it holds grants or not, and each renewal
pings the sessions holding the renewed grants. A ping also sets the lease to what the
session needs now (``lease_for``): the longest ``lease_ttl`` among its grants and the gate
it holds for a semaphore's head (a lease shorter than a grant's TTL could free the lock on
the server before the holder counts it lost).

Pings are never cancelled (a cancel request can land on a later lock statement of the
connection): each runs in a supervised task of its own, and a caller that stops waiting
(a renewal past its deadline) leaves it to finish or to drop its session.

"Does not answer" is judged with the server's help. A ping can queue behind a statement
that is slow for good reasons: a head swap waiting on a row lock, a commit waiting on a
busy disk, a server short of CPU. So a late ping does not drop its session by itself:
once the session has answered nothing for half an interval, the server is asked on
another connection (``Sessions.server_state``) whether it is still working for that
session. ``active`` keeps it (asked again every half interval); anything else (idle: the
answer was sent and never arrived, or the request never came) or no reply within half an
interval (the server is unreachable, or frozen) drops it. A silent partition so costs a
ping's due time plus about one interval, as before; a busy server costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Iterable

from agentlocks._tasks import TaskSupervisor

from ._connect import timeout_ms
from ._connection import Session
from ._session import Sessions

logger = logging.getLogger("agentlocks")

#: Shortest tick of the liveness loop (seconds), whatever the leases.
MIN_TICK = 0.05


class Liveness:
    """Pings the sessions of one backend: liveness of their grants, their server leases."""

    def __init__(
        self, sessions: Sessions, ping_sql: str, interval: float, tasks: TaskSupervisor
    ) -> None:
        self._sessions = sessions
        self._ping_sql = ping_sql
        self._interval = interval
        self._tasks = tasks
        self._task: asyncio.Task[None] | None = None
        # Set (and replaced) whenever a watchdog finds a session alive in the server.
        self._confirmed = asyncio.Event()

    def watch(self) -> None:
        """Make sure the loop runs (a session opened, or a grant was recorded)."""
        if (self._task is None or self._task.done()) and not self._tasks.closed:
            self._task = self._tasks.spawn(self._run(), name="postgres liveness")

    def lease_for(self, session: Session) -> float:
        """The server-side lease ``session`` needs now (seconds; 0: none)."""
        if session.grants:
            return max(session.gate_lease, *(g.lease_ttl for g in session.grants))
        return self._sessions.lease_ttl if session.shared else session.gate_lease

    def _tick(self) -> float:
        leases = [s.idle_timeout for s in self._sessions.sessions() if s.idle_timeout > 0]
        return max(MIN_TICK, min([self._interval / 2, *(t / 3 for t in leases)]))

    async def _run(self) -> None:
        while self._sessions.sessions():
            await asyncio.sleep(self._tick())
            now = time.monotonic()
            for session in self._sessions.sessions():
                quiet = now - session.last_ok
                held = bool(session.grants) and quiet >= self._interval / 2
                lease = session.idle_timeout > 0 and quiet >= session.idle_timeout / 3
                # Not while a statement runs on a spare: that statement (a wait in the
                # server's lock queue) keeps the server's idle clock still. A shared
                # session is pinged even then: its statement may hang on a connection cut
                # off silently, and the ping's watchdog (``_watch``) ends it, while a
                # statement the server is still working on keeps the session.
                running = session.pending > 0 and not session.shared
                busy = running or session.pinging is not None
                if (held or lease) and not session.dead and not busy:
                    session.pinging = self.ping(session)
            await self._sessions.give_back_unused()

    def ping(self, session: Session) -> asyncio.Task[None]:
        """Ping ``session`` in a task of its own (renewing its lease); return the task."""
        return self._tasks.spawn(self._ping(session), name=f"postgres ping pid={session.pid}")

    async def renew(self, sessions: Iterable[Session]) -> None:
        """Ping each session now and wait for the answers (cancelling stops the wait only).

        A session whose ping queues behind a statement the server is still working on is
        proven alive by the watchdog's question instead (``_watch``): a live server
        session keeps its advisory locks, and the question was asked after this call began.
        """
        started = time.monotonic()
        pings = {s: self.ping(s) for s in sessions if not s.dead}
        while pings:
            confirmed = asyncio.ensure_future(self._confirmed.wait())
            try:
                await asyncio.wait([*pings.values(), confirmed], return_when=FIRST_COMPLETED)
            finally:
                confirmed.cancel()
            pings = {s: p for s, p in pings.items() if not p.done() and s.confirmed_at < started}

    async def raise_lease(self, session: Session) -> None:
        """Raise ``session``'s server-side lease to what a new grant needs, before use."""
        if self.lease_for(session) > session.idle_timeout and not session.dead:
            await self._ping(session)

    async def _ping(self, session: Session) -> None:
        want = self.lease_for(session)
        sent = time.monotonic()
        # Not cancelled on timeout (see Session.run): the watchdog drops the session
        # instead, which ends the statement with the connection. It starts from a timer as
        # a task, so it first runs after the answers already read in that loop turn have
        # reached their statements (a stalled loop runs due timers right after reading).
        watchdogs: list[asyncio.Task[None]] = []

        def overdue() -> None:
            if not self._tasks.closed:
                watch = self._watch(session, sent)
                name = f"postgres liveness watchdog pid={session.pid}"
                watchdogs.append(self._tasks.spawn(watch, name=name))

        timer = asyncio.get_running_loop().call_later(self._interval / 2, overdue)
        try:
            row = await session.execute(self._ping_sql, session.guc, timeout_ms(want))
            session.check_pid(row[0])
            session.idle_timeout = want
        except Exception as exc:  # driver errors, and asyncpg's own confusion after a cancel
            self._drop(session, exc)
        finally:
            timer.cancel()
            for watch in watchdogs:
                watch.cancel()
            if session.pinging is asyncio.current_task():
                session.pinging = None

    async def _watch(self, session: Session, sent: float) -> None:
        """Drop ``session`` once it is silent and the server is not working for it.

        Silent: no statement of the session has finished for half an interval, counted
        from the ping at the earliest. Cancelled as soon as the ping answers.
        """
        half = self._interval / 2
        while not session.dead:
            silent = time.monotonic() - max(session.last_ok, sent)
            if silent < half:
                await asyncio.sleep(half - silent)
                continue
            asked = time.monotonic()
            state = await self._server_state(session, half)
            if session.last_ok >= asked:
                continue  # it answered meanwhile
            if state != "active":
                self._drop(session, f"no answer in time (server: {state})")
                return
            # The server works for it: it is alive (renewals waiting on it may go on); ask
            # again later.
            session.confirmed_at = asked
            self._confirmed.set()
            self._confirmed = asyncio.Event()
            await asyncio.sleep(half)

    async def _server_state(self, session: Session, within: float) -> str:
        """What the server does for ``session``, or why that is unknown, within ``within``."""
        # Supervised, and left running if late (an unreachable server): its statement or
        # connection attempt ends with its own session, with ``connect_timeout``, or when
        # the coordinator closes (the supervisor cancels it). Its failures are answers.
        ask = self._tasks.spawn(self._ask(session), name=f"postgres state pid={session.pid}")
        done, _ = await asyncio.wait({ask}, timeout=within)
        return ask.result() if done else "unreachable"

    async def _ask(self, session: Session) -> str:
        try:
            return await self._sessions.server_state(session) or "no such session"
        except Exception as exc:  # driver errors: the state is unknown, and why says so
            return f"unreachable, {exc}"

    def _drop(self, session: Session, reason: object) -> None:
        if not session.dead and not session.closing:
            logger.warning("dropping PostgreSQL session pid=%s: %s", session.pid, reason)
            self._sessions.kill(session)  # its termination reports the grants lost

    async def aclose(self) -> None:
        """Nothing to do: the supervisor ends the loop and the pings."""
