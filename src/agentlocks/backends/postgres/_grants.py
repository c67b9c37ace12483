"""Taking, recording and releasing grants on PostgreSQL (the statements' side of acquire).

``PostgresBackend`` decides *which* request talks to the server and when (its local FIFO);
this module runs the statements and keeps the books: every grant is recorded on the
session whose advisory lock it is (``Session.grants``) and in the resource's
``KeyState.holders``, so a lost connection can report exactly the grants it took along.

Hazards, each handled where it arises: a cancelled caller (the statement finishes under
``finish`` and what it granted is released before the cancellation propagates), a grant
racing the cancellation of a server-side wait (``Sessions.scrub``), a connection lost
between the statement and its recording (the grant is refused), and requests granted
together with the head of the queue (``KeyState.hand_out``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from agentlocks._tasks import TaskSupervisor, finish
from agentlocks.backends._base import Grant, describe
from agentlocks.errors import BackendError

from ._connect import timeout_ms
from ._connection import Session
from ._errors import DRIVER_ERRORS, PgBouncerDetected
from ._liveness import Liveness
from ._queue import Hold, KeyState, KeyStates, Kind, Request
from ._session import Sessions
from ._spares import holds_any
from ._sql import Sql


def _hand_out(state: KeyState, request: Request, grants: list[Grant]) -> list[Grant]:
    """``KeyState.hand_out`` for the head; a bypassing request has no batch to serve."""
    if request.bypass:
        return grants
    return state.hand_out(grants)


class Grants:
    """The grant-taking statements of one backend instance, and their bookkeeping."""

    def __init__(
        self,
        sessions: Sessions,
        sql: Sql,
        liveness: Liveness,
        states: KeyStates,
        interval: float,
        tasks: TaskSupervisor,
    ) -> None:
        self._sessions = sessions
        self._sql = sql
        self._liveness = liveness
        self._states = states
        self._interval = interval
        self._tasks = tasks
        self._mapped = sessions.errors.map_driver_errors()  # the error boundary

    def release_later(self, grants: list[Grant]) -> None:
        """Release grants nobody wants (their requests were cancelled) in the background.

        Their requests' cancellations have propagated already, so nothing waits for this:
        the supervisor owns the task and logs a failure with the key and token. Once the
        supervisor is closed, the connections are closing too and take the locks along.
        """
        for grant in grants:
            if self._tasks.closed:
                return
            self._tasks.spawn(
                self.release(grant),
                name="postgres background release",
                key=describe(grant.resource),
                token=grant.token,
            )

    async def fast(
        self, resource: str, state: KeyState, request: Request, lease_ttl: float
    ) -> Grant | None:
        keys = state.keys
        session = await self._sessions.shared()
        batch = state.take_batch(request)
        if request.capacity is not None:
            held = state.slots_on(session)
            return await self.granting(
                session, Kind.SLOT, resource, state, request, lease_ttl,
                self._sql.try_slots, keys.slot_base, request.capacity, held, 1 + len(batch),
                keys.gate,
            )  # fmt: skip
        if request.shared:
            return await self.granting(
                session, Kind.SHARED_SESSION, resource, state, request, lease_ttl,
                self._sql.try_shared, keys.gate, keys.hold, 1 + len(batch),
            )  # fmt: skip
        # Cancellation-safe by itself: a cancelled try leaves nothing held.
        assert session.coalescer is not None
        with self._mapped:
            row = await session.coalescer.try_exclusive_now(keys.gate, keys.hold)
        grants = self.record(row, session, Kind.SHARED_SESSION, resource, state, request, lease_ttl)
        if not grants:
            return None
        if grants[0].lease_ttl > session.idle_timeout:
            await self._longer_lease(session, grants[0])
        return grants[0]

    async def _longer_lease(self, session: Session, grant: Grant) -> None:
        """Raise the session's server-side lease to ``grant``'s TTL before handing it out.

        Only for a ``lease_ttl`` longer than the session's (the coordinator's default is
        what shared sessions open with). Invariant: a cancelled caller gives the grant back.
        """
        try:
            await finish(self._liveness.raise_lease(session))
        except asyncio.CancelledError:
            await finish(self.release(grant))
            raise

    async def granting(
        self,
        session: Session,
        kind: Kind,
        resource: str,
        state: KeyState,
        request: Request,
        lease_ttl: float,
        sql: str,
        *args: object,
    ) -> Grant | None:
        """Run a statement that may grant ``request`` and its batch; hand the grants out.

        If the caller is cancelled meanwhile, the statement still finishes (``finish``):
        its followers get their grants, and the caller's own grant is released before the
        cancellation propagates (invariant: nothing a cancelled request took survives it).
        """
        mine: list[Grant] = []

        async def step() -> None:
            with self._mapped:
                try:
                    row = await session.execute(sql, *args)
                except DRIVER_ERRORS:
                    _hand_out(state, request, [])
                    raise
            try:
                grants = self.record(row, session, kind, resource, state, request, lease_ttl)
            except BaseException:
                _hand_out(state, request, [])
                raise
            self.release_later(_hand_out(state, request, grants[1:]))
            if grants:
                mine.append(grants[0])
                await self._liveness.raise_lease(session)

        try:
            await finish(step())
        except asyncio.CancelledError:
            if mine:
                await finish(self.release(mine[0]))
            raise
        return mine[0] if mine else None

    def record(
        self,
        row: Any,
        session: Session,
        kind: Kind,
        resource: str,
        state: KeyState,
        request: Request,
        lease_ttl: float,
    ) -> list[Grant]:
        """Turn a statement's row into recorded grants, in grant order (maybe none)."""
        if row is None:
            return []
        keys = state.keys
        if kind is Kind.SLOT:
            slots, tokens = row["slots"] or [], row["tokens"] or []
            pairs = [
                (keys.slot_base + slot, slot, token)
                for slot, token in zip(slots, tokens, strict=True)
            ]
        else:
            tokens = row[0]
            if tokens is None:
                return []
            try:
                session.check_pid(row[1])
            except PgBouncerDetected:
                self._sessions.kill(session)
                raise
            if isinstance(tokens, int):
                tokens = [tokens]
            pairs = [(keys.hold, None, token) for token in tokens]
        if pairs and session.dead:  # its locks went with the connection
            raise BackendError(f"the connection holding {describe(resource)!r} was lost")
        now = time.monotonic()
        grants: list[Grant] = []
        owners = [request, *state.batch]  # grant i goes to owners[i] (see KeyState.hand_out)
        for i, (key, slot, token) in enumerate(pairs):
            ttl = owners[i].lease_ttl if i < len(owners) else lease_ttl
            hold = Hold(session, kind, key, slot, keys)
            grant = Grant(resource, int(token), request.shared, ttl, now, hold)
            session.grants.add(grant)
            state.holders[grant] = None
            grants.append(grant)
        if grants:
            self._liveness.watch()
        return grants

    async def _spare_for(self, state: KeyState, request: Request) -> Session:
        """The spare ``request`` waits on; while it queues for one, it is published as
        waiting (``postgres/_tickets.py``): ``pg_locks`` shows it only once it waits there."""
        exempt = holds_any()
        if not self._sessions.spare_free(exempt):
            request.in_line = True
            state.changed()
        try:
            session = await self._sessions.spare(exempt)
        finally:
            request.in_line = False
        request.session = session
        if state.published:
            state.changed()
        return session

    async def wait_lock(
        self, resource: str, state: KeyState, request: Request, lease_ttl: float
    ) -> Grant:
        keys = state.keys
        session = await self._spare_for(state, request)
        sql = self._sql.wait_shared if request.shared else self._sql.wait_exclusive
        lease = request.lease_ttl
        session.idle_timeout = 0.0  # a clean spare; the wait sets its lease once granted
        with self._mapped:
            try:
                # The one statement that is cancelled on the server: the spare holds nothing
                # but what this wait takes, and is scrubbed afterwards.
                row = await session.execute(
                    sql, keys.gate, keys.hold, session.guc, timeout_ms(lease)
                )
            except asyncio.CancelledError:
                # Invariant: a cancelled request leaves no place in the server queue and no
                # lock. asyncpg has sent the cancel request; release whatever the wait took
                # (the gate, or the whole grant if it raced the cancellation) before
                # propagating, even under repeated cancels.
                await finish(self._sessions.scrub(session))
                raise
            except DRIVER_ERRORS:
                await self._sessions.close(session)
                raise
        session.idle_timeout = lease
        try:
            (grant,) = self.record(row, session, Kind.PINNED, resource, state, request, lease_ttl)
        except BackendError:
            await self._sessions.close(session)
            raise
        return grant

    async def wait_slot(
        self, resource: str, state: KeyState, request: Request, lease_ttl: float
    ) -> Grant:
        keys = state.keys
        assert request.capacity is not None
        gatekeeper = await self._spare_for(state, request)
        lease = request.lease_ttl
        gatekeeper.idle_timeout = 0.0  # a clean spare; the wait sets its lease with the gate
        with self._mapped:
            try:
                row = await gatekeeper.execute(
                    self._sql.wait_gate, keys.gate, gatekeeper.guc, timeout_ms(lease)
                )
                gatekeeper.check_pid(row[0])
            except BaseException:
                await finish(self._sessions.scrub(gatekeeper))
                raise
        # The gate is leased like a grant (the liveness loop pings the gatekeeper within
        # it): a head cut off silently frees the queue on the server within ``lease``.
        gatekeeper.idle_timeout = gatekeeper.gate_lease = lease
        # We hold the gate exclusively: fast paths fail, so the slots are ours to try.
        released = asyncio.Event()

        def wake(*_: object) -> None:
            released.set()

        grant: Grant | None = None
        try:
            await self._sessions.listen(keys.channel, wake)
            while grant is None:
                if gatekeeper.dead:
                    # Its lease ran out or it was dropped: the gate, our place, is gone.
                    raise BackendError(
                        f"the connection holding the queue of {describe(resource)!r} was lost"
                    )
                released.clear()  # before trying: a release after the try still wakes us
                session = await self._sessions.shared()
                held = state.slots_on(session)
                batch = state.take_batch(request)
                grant = await self.granting(
                    session, Kind.SLOT, resource, state, request, lease_ttl,
                    self._sql.take_slots, keys.slot_base, request.capacity, held,
                    1 + len(batch),
                )  # fmt: skip
                if grant is not None:
                    request.waiting = False  # a holder now, leaving the gate (inspect)
                else:
                    # Pushed by NOTIFY; the timeout only covers a holder that died silently.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(released.wait(), self._interval)
        finally:
            # Letting the gate go admits the next head. Invariant: if a cancellation lands
            # here after the slot was won, the slot is released before it propagates.
            try:
                await finish(self._leave_gate(gatekeeper, keys.channel, wake))
            except asyncio.CancelledError:
                if grant is not None:
                    await finish(self.release(grant))
                raise
        return grant

    async def _leave_gate(self, gatekeeper: Session, channel: str, wake: Any) -> None:
        # Before the scrub: a ping after it must not lease the clean spare again.
        gatekeeper.gate_lease = gatekeeper.idle_timeout = 0.0
        await asyncio.gather(
            self._sessions.scrub(gatekeeper), self._sessions.unlisten(channel, wake)
        )

    # -- release, renew, verify ------------------------------------------------------------------

    async def release(self, grant: Grant) -> bool:
        """Release ``grant``; True if its session still held it (False: gone, lost).

        Runs to its end on the server even if the caller is cancelled, repeatedly
        (``PostgresBackend.release_finishes``): nothing below suspends before the unlock
        is queued, a fast-path unlock waits on an Outcome (``postgres/_batch.py``) and the
        others run under ``finish``. The caller's cancellation is raised afterwards.
        """
        hold = grant.handle
        assert isinstance(hold, Hold)
        if hold.released:
            return False  # idempotent; also after the grant was lost with its connection
        hold.released = True
        if hold.holders is not None:
            hold.holders.discard(grant)
        session = hold.session
        session.grants.discard(grant)
        # Invariant: the grant stays among its key's holders until the server has let go
        # of the lock (or the connection went): until then inspect() reports it held and a
        # try of the key is refused here, as the server would refuse it (a try on another
        # shared session can overtake an unlock still queued on this one).
        try:
            if session.dead:
                return False  # the server released it with the connection
            if hold.kind is Kind.SHARED_SESSION:
                assert session.coalescer is not None
                with self._mapped:
                    try:
                        return await session.coalescer.release_now(hold.key, grant.shared)
                    except DRIVER_ERRORS:
                        if session.dead or session.conn.is_closed():
                            return False
                        raise
            return await finish(self._unlock(grant, hold, session))
        finally:
            self._states.forget_holder(grant)

    async def _unlock(self, grant: Grant, hold: Hold, session: Session) -> bool:
        """Unlock a slot or a pinned grant; a pinned spare goes back clean, or is closed."""
        sql = self._sql
        with self._mapped:
            try:
                if hold.kind is Kind.SLOT:
                    row = await session.execute(sql.release_slot, hold.key, hold.keys.channel)
                else:
                    unlock = (
                        sql.unlock_pinned_shared if grant.shared else sql.unlock_pinned_exclusive
                    )
                    row = await session.execute(unlock, hold.keys.gate, hold.keys.hold, session.guc)
            except DRIVER_ERRORS:
                if hold.kind is Kind.PINNED:
                    await self._sessions.close(session)
                if session.dead or session.conn.is_closed():
                    return False
                raise
        if hold.kind is Kind.PINNED:
            session.idle_timeout = 0.0
            await self._sessions.give_back(session)
        return bool(row[0])
