"""``postgres://`` / ``postgresql://``: session-level advisory locks, through asyncpg.

How it works, said once: ``docs/backends.md``, "PostgreSQL" (its "How it works" part);
the package's ``__init__`` maps where each part lives. This module holds
:class:`PostgresBackend`: the ``Backend`` methods, the local FIFO's entry (who queues
locally, who talks to the server, who *bypasses*), and ``aclose``. Hazards are commented
where they are handled.
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
    HolderInfo,
    LostCallback,
    SignalCallback,
    describe,
)
from agentlocks.backends._capabilities import HeadSwap
from agentlocks.errors import AgentLocksError, Busy, ConfigError, QueueFull

from ._connect import driver_dsn
from ._connection import Session
from ._enumerate import AdvisoryLock, advisory_locks
from ._errors import DRIVER_ERRORS, ErrorBoundary
from ._grants import Grants
from ._heads import PgHeads
from ._liveness import Liveness
from ._observe import foreign_waiting, granted_unrecorded, snapshot
from ._options import OPTION_NAMES, parse_options
from ._queue import Hold, KeyState, KeyStates, Request
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
    """Locks and semaphores on PostgreSQL advisory locks (``docs/backends.md``, "PostgreSQL")."""

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
            errors=ErrorBoundary(settings.redacted_url, urlsplit(settings.url).password),
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
            answer_within=options.liveness_interval,
        )
        self._liveness = Liveness(self._sessions, self._sql.ping, options.liveness_interval, tasks)
        self._sessions.on_open = self._liveness.watch
        self._states = KeyStates(self._namespace)
        self._grants = Grants(
            self._sessions,
            self._sql,
            self._liveness,
            self._states,
            options.liveness_interval,
            tasks,
        )
        self._counts = WaitCounts(self._sessions, self._sql, self._states.drop_if_idle, tasks)
        self._states.on_change = self._counts.changed  # bound once: a state is made per acquire
        self._heads = PgHeads(self._sessions, self._sql, self._namespace)
        self._mapped = self._sessions.errors.map_driver_errors()  # the error boundary
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
        state = self._states.state(resource)
        request = Request(shared, capacity, lease_ttl)
        checked = False
        if state.active is not None or state.queue or state.batch:
            # Someone of this process is ahead: queue locally, in FIFO order.
            if not wait:
                self._states.drop_if_idle(state)
                raise Busy(f"{describe(resource)!r} is held", key=describe(resource))
            if max_waiting is not None:
                try:
                    await self._check_waiting(resource, state, max_waiting)
                finally:
                    self._states.drop_if_idle(state)
                checked = True
                # The check suspended: whoever was ahead may be gone, and the state with it.
                state = self._states.state(resource)
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
                self._states.drop_if_idle(state)
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
            self._states.drop_if_idle(state)

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
            self._states.drop_if_idle(state)

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
        with self._mapped:
            try:
                row = await hold.session.run(self._sql.holds, hold.key)
            except DRIVER_ERRORS:
                if hold.session.dead or hold.session.conn.is_closed():
                    return False
                raise
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
            self._states.forget_holder(grant)
            self._on_lost(grant)

    # -- queue bookkeeping -----------------------------------------------------------------------

    async def _rows(self, keys: Keys, semaphore: bool) -> list[Any]:
        low, high = (keys.slot_base, keys.slot_base + MAX_SLOTS - 1) if semaphore else (1, 0)
        tickets = (keys.ticket_base, keys.ticket_base + TICKET_BITS - 1)
        session = await self._sessions.shared()
        with self._mapped:
            rows = await session.fetch(self._sql.locks, [keys.gate, keys.hold], low, high, *tickets)
        return list(rows)

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
        return await advisory_locks(self._sessions, self._sessions.pids)

    # -- registries --------------------------------------------------------------------------------

    async def read_generation(self, name: str) -> int:
        session = await self._sessions.shared()
        with self._mapped:
            await self._sessions.ensure_table(session)
            row = await session.run(self._sql.read_generation, self._namespace, name)
        return 0 if row is None else int(row[0])

    async def publish_generation(self, name: str, generation: int, grant: Grant) -> bool:
        # Fenced: one statement on the session holding the writer's grant writes only while
        # that session still holds the registry's lock (and never lowers the value).
        hold = grant.handle
        if not isinstance(hold, Hold) or hold.released or hold.session.dead:
            return False
        shared = await self._sessions.shared()
        with self._mapped:
            try:
                await self._sessions.ensure_table(shared)
                row = await hold.session.run(
                    self._sql.publish_generation_fenced, self._namespace, name, generation,
                    hold.key,
                )  # fmt: skip
            except DRIVER_ERRORS:
                session = hold.session
                if session.dead or session.conn.is_closed():
                    return False  # the grant went with its connection: nothing written
                raise
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
