"""``postgres://`` / ``postgresql://``: session-level advisory locks, through asyncpg.

Keys and collisions. Each resource (namespace + ``"l:key"``) hashes to a stable signed
64-bit BLAKE2b value; a lock uses two advisory keys that differ only in the low bit, the
*gate* and the *hold* (``postgres/_sql.py``). Two resources share a lock with probability
2**-63, so with ``n`` resources in use at once the chance that any two collide is about
``n**2 / 2**64`` (one in 18 million for a million live keys). A collision never breaks
exclusion: the two keys merely queue behind each other (a task holding one while
acquiring the other would wait for itself, at those odds). Advisory locks are per
database and share one key space with any other user of ``pg_advisory_lock`` there.

Waiting is the server's own lock queue. A request first tries the fast path on a shared
session, in one statement: pass the gate shared, take the hold with
``pg_try_advisory_lock``, let go of the gate, draw the token (under load, the fast paths
and releases queued on one shared session go out together as one statement:
``postgres/_batch.py``). The gate is held exclusively
(or waited for) only by queued requests, so the fast path fails while anyone queues: no
barging. Otherwise the request waits on a *spare* session with ``pg_advisory_lock(gate)``
then ``pg_advisory_lock(hold)``: PostgreSQL queues it FIFO, makes later shared requests
wait behind a queued exclusive one, and grants it *within* the holder's unlock (pushed, no
polling). In front of the server, each process keeps a FIFO per key (``postgres/_queue.py``):
only its head talks to the server, and the requests behind it that can share its grant
(adjacent shared requests, or semaphore requests up to the free capacity) are granted in
the same statement. So a process's requests are granted in exactly the order it made
them, and across processes requests are ordered by when they reach the server.
An exclusive or semaphore request that finds every request of its process ahead of it
already waiting in the server, and no local queue, *bypasses*: it waits in the server
queue beside them on a spare of its own (``KeyState.can_bypass``), so requests that
arrive one after another are ordered exactly across processes. (Shared lock requests do
not: granted together with their neighbours, they must draw tokens in arrival order,
which only the head's batch statement does.) Bursts queue locally (one spare per key for any
number of waiters), and a request queued there enters the server queue only when the
one ahead of it is granted: a later request of another process can then be served
before it (API.md's FIFO across processes holds per request for spaced arrivals, per
head within a burst; exact order in bursts would cost one connection per waiter).

Connection budget, per process: ``pool_size`` shared sessions (default 8), on which any
number of fast-path grants live; plus one spare per request waiting in the server (the
head of each key's local queue, and requests that bypassed it), which the grant it wins
keeps (*pinned*) until released,
and then goes back to an idle list (spares beyond ``max_idle`` are closed after 5 s
unused, so a busy key reuses its spares); plus one LISTEN connection
once a semaphore is waited on. So 1,000 locks taken without contention cost at most
``pool_size`` connections, and 200 tasks queued on one key cost one spare. At most
``max_spares`` spares (default 32) are lent at once (``postgres/_spares.py``): past that, and
when the server refuses a connection while some of ours are lent, a wait queues FIFO for
a spare to come back, within its ``timeout``. The bound is soft so that it never
deadlocks: a task that already holds a grant never waits for a spare (it could hold what
the lent spares wait for), and a wait queued for ``spare_patience`` seconds (default 1)
takes a spare beyond the bound (a lease handed to another task escapes the first rule).
So a coordinator keeps about ``pool_size + max_spares + 1`` connections.

Fencing tokens come from one sequence (``<schema>.agentlocks_tokens``, always
schema-qualified, never resolved through a role's ``search_path``; created on first use,
``CACHE 1``), drawn in the granting statement after the hold is taken: strictly
increasing per key (in fact per database) across every client, role and server restart.
Registry generations (``<schema>.agentlocks_generations``) are published by one statement
on the writer's own session that writes only while that session holds the lock.

Lost leases. PostgreSQL releases a session's advisory locks when its connection ends: a
crashed holder's locks are free as soon as the server reads the closed socket, and a
waiting session whose client vanished leaves the queue within a second
(``client_connection_check_interval``, PostgreSQL >= 14). When one of this process's
connections ends (terminated backend, network drop), asyncpg's termination callback
reports every grant on it to ``on_lost`` at once; the coordinator cancels the holders'
blocks. A silent holder (partitioned, or its loop stalled) is freed by the server itself:
sessions holding grants carry ``idle_session_timeout`` = ``lease_ttl`` (a server-side
lease), which ``renew`` (one ping per session holding the renewed grants, every third of
a TTL) and the liveness loop (``postgres/_liveness.py``) keep from firing on a healthy holder.
The liveness loop also drops a session that does not answer a ping within
``liveness_interval`` (default 2 s). Sessions turn off ``statement_timeout`` and
``lock_timeout``, which a database default could set against them.

Semaphores. The slots of a semaphore are advisory keys ``slot_base + i``. The fast path
passes the gate shared and takes free slots. The head of the queue holds the gate
exclusively (nobody takes a slot past it), listens on the semaphore's channel, and
retries whenever a release sends ``NOTIFY`` (pushed). A slot freed by a crashed holder
sends no notification: the head notices it within ``liveness_interval``.

Counting waiters cluster-wide (``max_waiting``, ``inspect``). This process's come from its
own queue. Other processes' heads show in ``pg_locks`` (queued, or holding a semaphore's
gate); the requests queued behind them do not, so every process publishes each local
queue's length as a few shared advisory locks, one per set bit (``postgres/_tickets.py``).

Cancellation (``postgres/_grants.py``). Statements that can grant never yield to a cancelled
caller half way: they run under ``agentlocks._tasks.finish``, or in a shared session's
batch worker whose outcomes refuse ``cancel()`` (``_batch.Outcome``), so a cancelled
caller never leaves a grant nobody knows about: the statement finishes and what it
granted is released before the cancellation propagates. A server-side wait is
cancelled on the server (asyncpg's cancel request); then the spare runs
``pg_advisory_unlock_all()``, which also hands on a grant that raced the cancellation. A
spare that cannot be cleaned is closed, never reused, and no connection is ever handed
back to a user-supplied pool while it holds a lock.

PgBouncer in transaction or statement pooling mode silently breaks session-level locks
(consecutive statements may run in different server sessions). Each session records
``pg_backend_pid()`` when it opens and every granting statement and liveness ping returns
it again: a pid that changes raises ``BackendError`` naming the cause. Connect directly,
or through session pooling.

Options (``postgres/_options.py``): ``connect_timeout`` (seconds, default 5), ``liveness_interval``
(seconds, default 2), ``pool_size`` (default 8), ``max_idle`` (default 4), ``max_spares``
(default 32), ``spare_patience`` (seconds, default 1), ``schema`` (of
the sequence and the ``agentlocks_generations`` table; default ``public``),
``application_name`` (default ``"agentlocks"``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from agentlocks._tasks import TaskSupervisor, finish
from agentlocks._url import COMMON_OPTIONS, Settings
from agentlocks.backends._base import (
    Grant,
    HeadSwap,
    HolderInfo,
    LostCallback,
    SignalCallback,
    describe,
)
from agentlocks.errors import AgentLocksError, BackendError, Busy, ConfigError, QueueFull

from ._connection import Session, driver_dsn
from ._enumerate import AdvisoryLock, advisory_locks
from ._grants import DRIVER_ERRORS, Grants
from ._heads import PgHeads
from ._liveness import Liveness
from ._observe import foreign_waiting, granted_unrecorded, snapshot
from ._options import OPTION_NAMES, parse_options
from ._queue import Hold, KeyState, Request
from ._session import Sessions
from ._signals import PgSignals
from ._spares import holdings, holds_any
from ._sql import MAX_SLOTS, TICKET_BITS, Keys, Sql, keys_for
from ._tickets import WaitCounts

__all__ = ["PostgresBackend"]

T = TypeVar("T")

logger = logging.getLogger("agentlocks")


def _held_here(grant: Grant) -> Grant:
    """Record ``grant`` as held by the calling task's context (see ``postgres/_spares.py``)."""
    hold = grant.handle
    assert isinstance(hold, Hold)
    hold.holders = holdings()
    hold.holders.add(grant)
    return grant


class PostgresBackend:
    """Locks and semaphores on PostgreSQL advisory locks (see the module docstring)."""

    leases_expire: ClassVar[bool] = True
    shared_state: ClassVar[bool] = True
    option_names: ClassVar[frozenset[str]] = OPTION_NAMES
    # release() never lets its caller's cancellation cut it short: fast-path releases wait
    # on an Outcome (postgres/_batch.py), the others run under finish (_grants.Grants.release).
    release_finishes: ClassVar[bool] = True

    def __init__(self, settings: Settings, on_lost: LostCallback, tasks: TaskSupervisor) -> None:
        self._tasks = tasks  # owns this backend's background tasks
        options = parse_options(settings.options)
        pool = settings.client
        if pool is not None and not (hasattr(pool, "acquire") and hasattr(pool, "release")):
            raise ConfigError(f"postgres= must be an asyncpg pool, got {type(pool).__name__}")
        self._settings = settings
        self._on_lost = on_lost
        self._namespace = settings.namespace
        self._sql = Sql(options.schema)
        self._sessions = Sessions(
            dsn=driver_dsn(settings.url, OPTION_NAMES | COMMON_OPTIONS),
            redacted=settings.redacted_url,
            password=urlsplit(settings.url).password,
            pool=pool,
            sql=self._sql,
            pool_size=options.pool_size,
            max_idle=options.max_idle,
            max_spares=options.max_spares,
            spare_patience=options.spare_patience,
            connect_timeout=options.connect_timeout,
            application_name=options.application_name,
            on_dead=self._session_died,
            tasks=tasks,
            lease_ttl=settings.lease_ttl,
        )
        self._liveness = Liveness(self._sessions, self._sql.ping, options.liveness_interval, tasks)
        self._sessions.on_open = self._liveness.watch
        self._states: dict[str, KeyState] = {}
        self._grants = Grants(
            self._sessions,
            self._sql,
            self._liveness,
            self._states,
            options.liveness_interval,
            tasks,
        )
        self._counts = WaitCounts(self._sessions, self._sql, self._grants.drop_if_idle, tasks)
        self._queue_changed = self._counts.changed  # bound once: a state is made per acquire
        self._heads = PgHeads(self._sessions, self._sql, self._namespace, self._error)
        # Signals to holders (on_busy="interrupt"): postgres/_signals.py.
        self._signals = PgSignals(self._sessions, self._sql, self._namespace, tasks)
        # Tasks inside acquire(), so aclose() can fail them at once (API.md, "Connecting"),
        # and those aclose() cancelled for that purpose.
        self._acquiring: dict[asyncio.Task[Any], asyncio.Event] = {}
        self._closing: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"PostgresBackend(url={self._settings.redacted_url!r}, "
            f"namespace={self._namespace!r}, connections={len(self._sessions)})"
        )

    def backend_pid(self, grant: Grant) -> int | None:
        """The server pid of the session holding ``grant`` (diagnostics and tests)."""
        hold = grant.handle
        if not isinstance(hold, Hold) or hold.released or hold.session.dead:
            return None
        return hold.session.pid

    def connection_count(self) -> int:
        """How many connections this backend has open now (including the LISTEN one)."""
        return len(self._sessions)

    def _error(self, exc: BaseException) -> BackendError:
        return self._grants.error(exc)

    # -- acquire -------------------------------------------------------------------------------

    async def acquire(
        self,
        resource: str,
        *,
        shared: bool,
        capacity: int | None,
        wait: bool,
        max_waiting: int | None,
        lease_ttl: float,
    ) -> Grant:
        if self._closed:
            raise AgentLocksError("the PostgreSQL backend is closed")
        if capacity is not None and capacity >= MAX_SLOTS:
            raise ConfigError(f"capacity must be below {MAX_SLOTS} on PostgreSQL")
        state = self._state(resource)
        request = Request(shared, capacity, lease_ttl)
        checked = False
        if state.active is not None or state.queue or state.batch:
            # Someone of this process is ahead: queue locally, in FIFO order.
            if not wait:
                self._grants.drop_if_idle(resource, state)
                raise Busy(f"{describe(resource)!r} is held", key=describe(resource))
            if max_waiting is not None:
                try:
                    await self._check_waiting(resource, state, max_waiting)
                finally:
                    self._grants.drop_if_idle(resource, state)
                checked = True
                # The check suspended: whoever was ahead may be gone, and the state with it.
                state = self._state(resource)
        if state.active is not None or state.queue or state.batch:
            # Not for shared lock requests: granted together with their neighbours, they
            # must draw their tokens in arrival order, which only the head's batch does.
            bypassable = request.capacity is not None or not request.shared
            if bypassable and self._sessions.spare_free(holds_any()) and state.can_bypass():
                return await self._guarded(
                    resource, self._bypass(resource, state, request, lease_ttl)
                )
            try:
                # Leaves the queue by itself if cancelled.
                await self._guarded(resource, state.enqueue(request))
            except BaseException:
                if request.grant is not None:  # granted with the head as it was cancelled
                    await finish(self._grants.release(request.grant))
                self._grants.drop_if_idle(resource, state)
                raise
            if request.grant is not None:  # granted together with the request ahead
                request.settle()
                return _held_here(request.grant)
        else:
            state.active = request
        try:
            grant = await self._attempt(
                resource, state, request, wait, max_waiting, lease_ttl, checked
            )
            return _held_here(grant)
        finally:
            request.settle()
            state.advance(request)
            if state.published:  # this request may have been counted there: recount
                state.changed()
            self._grants.drop_if_idle(resource, state)

    async def _bypass(
        self, resource: str, state: KeyState, request: Request, lease_ttl: float
    ) -> Grant:
        """Wait in the server queue beside this process's head (``KeyState.can_bypass``)."""
        request.bypass = request.waiting = True
        state.remote.add(request)
        try:
            if request.capacity is None:
                grant = await self._grants.wait_lock(resource, state, request, lease_ttl)
            else:
                grant = await self._grants.wait_slot(resource, state, request, lease_ttl)
            return _held_here(grant)
        finally:
            request.settle()
            state.remote.discard(request)
            if state.published:  # this request may have been counted there: recount
                state.changed()
            self._grants.drop_if_idle(resource, state)

    def _state(self, resource: str) -> KeyState:
        state = self._states.get(resource)
        if state is None:
            keys = keys_for(self._namespace, resource)
            state = self._states[resource] = KeyState(resource, keys, self._queue_changed)
        return state

    async def _attempt(
        self,
        resource: str,
        state: KeyState,
        request: Request,
        wait: bool,
        max_waiting: int | None,
        lease_ttl: float,
        checked: bool,
    ) -> Grant:
        if state.compatible(request.shared, request.capacity):
            grant = await self._grants.fast(resource, state, request, lease_ttl)
            if grant is not None:
                return grant
        if not wait:
            raise Busy(f"{describe(resource)!r} is held", key=describe(resource))
        if max_waiting is not None and not checked:
            await self._check_waiting(resource, state, max_waiting)
        request.waiting = True
        if request.capacity is None:
            return await self._guarded(
                resource, self._grants.wait_lock(resource, state, request, lease_ttl)
            )
        return await self._guarded(
            resource, self._grants.wait_slot(resource, state, request, lease_ttl)
        )

    async def _guarded(self, resource: str, wait: Coroutine[Any, Any, T]) -> T:
        """Run one waiting step of an acquire, so that ``aclose()`` can fail it at once.

        aclose() cancels the tasks waiting here; that cancellation (and only that one: the
        task's own cancellations stay pending) becomes the ``AgentLocksError`` waiting
        requests must fail with. The step's cleanup ran on the way out, as for any
        cancellation. Only waits pay for this: the uncontended fast path never comes here.
        """
        task = asyncio.current_task()
        assert task is not None
        left = self._acquiring[task] = asyncio.Event()
        try:
            return await wait
        except asyncio.CancelledError:
            if task in self._closing:
                self._closing.discard(task)
                if task.uncancel() == 0:
                    raise AgentLocksError(
                        f"the coordinator was closed while {describe(resource)!r} was awaited"
                    ) from None
            raise
        finally:
            self._acquiring.pop(task, None)
            left.set()

    async def release(self, grant: Grant) -> bool:
        return await self._grants.release(grant)

    async def renew(self, grants: Sequence[Grant]) -> Sequence[Grant]:
        # One ping per session holding the grants: proves the session alive and restarts
        # its server-side lease (postgres/_liveness.py). Cancellable (the renewer gives each
        # call a deadline): the pings run on in tasks of their own.
        sessions = {g.handle.session for g in grants if isinstance(g.handle, Hold)}
        await self._liveness.renew(sessions)
        return [g for g in grants if not isinstance(g.handle, Hold) or g.handle.released]

    async def verify(self, grant: Grant) -> bool:
        hold = grant.handle
        if not isinstance(hold, Hold) or hold.released or hold.session.dead:
            return False
        try:
            row = await hold.session.run(self._sql.holds, hold.key)
        except DRIVER_ERRORS as exc:
            if hold.session.dead or hold.session.conn.is_closed():
                return False
            raise self._error(exc) from exc
        return bool(row[0]) and not hold.released

    # -- lost connections ----------------------------------------------------------------------

    def _session_died(self, session: Session) -> None:
        for grant in list(session.grants):
            session.grants.discard(grant)
            hold = grant.handle
            assert isinstance(hold, Hold)
            hold.released = True
            if hold.holders is not None:
                hold.holders.discard(grant)
            state = self._states.get(grant.resource)
            if state is not None:
                state.holders.pop(grant, None)
                self._grants.drop_if_idle(grant.resource, state)
            self._on_lost(grant)

    # -- queue bookkeeping -----------------------------------------------------------------------

    async def _rows(self, keys: Keys, semaphore: bool) -> list[Any]:
        low, high = (keys.slot_base, keys.slot_base + MAX_SLOTS - 1) if semaphore else (1, 0)
        tickets = (keys.ticket_base, keys.ticket_base + TICKET_BITS - 1)
        session = await self._sessions.shared()
        try:
            rows = await session.fetch(self._sql.locks, [keys.gate, keys.hold], low, high, *tickets)
            return list(rows)
        except DRIVER_ERRORS as exc:
            raise self._error(exc) from exc

    async def _check_waiting(self, resource: str, state: KeyState, max_waiting: int) -> None:
        semaphore = resource[0] == "s"
        waiting = state.waiting()
        if waiting < max_waiting:
            rows = await self._rows(state.keys, semaphore)
            foreign = foreign_waiting(rows, self._sessions.pids, state.keys, semaphore)
            waiting = state.waiting() + foreign
        if waiting >= max_waiting:
            raise QueueFull(
                f"{waiting} requests already wait on {describe(resource)!r} "
                f"(max_waiting={max_waiting})",
                key=describe(resource),
            )

    async def inspect(self, resource: str) -> tuple[tuple[HolderInfo, ...], int]:
        semaphore = resource[0] == "s"
        state = self._states.get(resource)
        keys = state.keys if state is not None else keys_for(self._namespace, resource)
        rows = await self._rows(keys, semaphore)
        settling = [
            asyncio.ensure_future(r.settled.wait()) for r in granted_unrecorded(rows, state)
        ]
        if settling:
            # The server granted our queued requests already; their tasks record the grants
            # (and tokens) at their next step: report them as the holders they are. A
            # bounded, cancellable wait (a stalled task cannot hold inspect() up).
            try:
                await asyncio.wait(settling, timeout=1.0)
            finally:
                for waiter in settling:
                    waiter.cancel()
        state = self._states.get(resource)
        return snapshot(rows, self._sessions.pids, keys, state, semaphore)

    async def advisory_locks(self) -> list[AdvisoryLock]:
        """Advisory locks of other sessions in this database, by key (``_enumerate.py``)."""
        return await advisory_locks(self._sessions, self._error, self._sessions.pids)

    # -- registries --------------------------------------------------------------------------------

    async def read_generation(self, name: str) -> int:
        session = await self._sessions.shared()
        try:
            await self._sessions.ensure_table(session)
            row = await session.run(self._sql.read_generation, self._namespace, name)
        except DRIVER_ERRORS as exc:
            raise self._error(exc) from exc
        return 0 if row is None else int(row[0])

    async def publish_generation(self, name: str, generation: int, grant: Grant) -> bool:
        # Fenced: one statement on the session holding the writer's grant writes only while
        # that session still holds the registry's lock (and never lowers the value).
        hold = grant.handle
        if not isinstance(hold, Hold) or hold.released or hold.session.dead:
            return False
        shared = await self._sessions.shared()
        try:
            await self._sessions.ensure_table(shared)
            row = await hold.session.run(
                self._sql.publish_generation_fenced, self._namespace, name, generation, hold.key
            )
        except DRIVER_ERRORS as exc:
            session = hold.session
            if session.dead or session.conn.is_closed():
                return False  # the grant went with its connection: nothing written
            raise self._error(exc) from exc
        return row is not None

    # -- head records (``_heads.py``) ---------------------------------------------------------

    async def swap_head(
        self, resource: str, field: str, expected: str | None, new: str, token: int | None,
        ttl: float,
    ) -> HeadSwap:  # fmt: skip
        return await self._heads.swap(resource, field, expected, new, token, ttl)

    async def drop_heads(self, resource: str) -> None:
        await self._heads.drop(resource)

    # -- signals to holders (_signals.py) ----------------------------------------------------

    async def signal(self, resource: str, kind: str, *, ttl: float, mark: int | None = None) -> int:
        return await self._signals.send(resource, kind, ttl, mark)

    def watch_signals(
        self, resource: str, deliver: SignalCallback
    ) -> AbstractAsyncContextManager[None]:
        return self._signals.watch(resource, deliver)

    async def clear_signal(self, resource: str, kind: str, mark: int) -> None:
        await self._signals.clear(resource, kind, mark)

    async def aclose(self) -> None:
        # Requests still waiting fail at once with an AgentLocksError (see acquire): they
        # are cancelled, withdraw as any cancelled request does, and report the closing.
        self._closed = True
        current = asyncio.current_task()
        leaving = []
        for task, left in list(self._acquiring.items()):
            if task is not current and not task.done():
                self._closing.add(task)
                task.cancel()
                leaving.append(asyncio.ensure_future(left.wait()))
        if leaving:
            # Let them withdraw (scrub their spares) while the sessions are still open:
            # closing a connection under a withdrawal in progress confuses asyncpg.
            await asyncio.wait(leaving, timeout=1.0)
            for waiter in leaving:
                waiter.cancel()
        await self._signals.aclose()
        await self._counts.aclose()
        await self._liveness.aclose()
        await self._sessions.aclose()
