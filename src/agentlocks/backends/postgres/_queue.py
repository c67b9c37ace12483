"""Per-key bookkeeping of the PostgreSQL backend: this process's holders and local FIFO.

Only the request at the head of a key's local queue (``active``) talks to the server; the
others wait here in arrival order. So one process puts at most one request per key into the
server's lock queue (one spare connection), whatever the number of its waiting tasks, and
requests of one process are granted in exactly the order they were made.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from agentlocks.backends._base import Grant

from ._sql import keys_for

if TYPE_CHECKING:
    from ._connection import Session
    from ._sql import Keys


class Kind(enum.Enum):
    """Where a grant's advisory lock lives."""

    SHARED_SESSION = "shared"  # the hold key, on a shared session (fast path)
    PINNED = "pinned"  # gate and hold keys, on the spare that waited for them
    SLOT = "slot"  # one semaphore slot key, on a shared session


class Hold:
    """Backend-private part of a grant (``Grant.handle``)."""

    __slots__ = ("holders", "key", "keys", "kind", "released", "session", "slot")

    def __init__(self, session: Session, kind: Kind, key: int, slot: int | None, keys: Keys):
        self.session = session
        self.kind = kind
        self.key = key  # the advisory key that *is* the grant (hold key or slot key)
        self.slot = slot
        self.keys = keys
        self.released = False  # released, or lost with its connection
        # The context's set of held grants this grant is in (``_spares.holdings``).
        self.holders: set[Grant] | None = None

    def __repr__(self) -> str:
        return f"Hold(pid={self.session.pid}, {self.kind.value}, released={self.released})"


class Request:
    """One acquire call while it waits or is being decided."""

    __slots__ = (
        "bypass", "capacity", "grant", "in_line", "lease_ttl", "session", "settled", "shared",
        "turn", "waiting",
    )  # fmt: skip

    def __init__(self, shared: bool, capacity: int | None, lease_ttl: float) -> None:
        self.shared = shared
        self.capacity = capacity
        self.lease_ttl = lease_ttl
        # Resolved when the request becomes active, or when it was granted together with
        # the active request ahead of it (``grant`` is then set).
        self.turn: asyncio.Future[None] | None = None
        self.grant: Grant | None = None
        self.waiting = False  # it will wait (counted by inspect and max_waiting)
        self.session: Session | None = None  # the spare it waits on, once it does
        self.settled = asyncio.Event()  # set when the request is granted or has failed
        # Sent to the server queue beside the head, on a spare of its own (never batched).
        self.bypass = False
        self.in_line = False  # queued for a spare session (the spare budget is spent)

    def settle(self) -> None:
        """Mark the request decided (granted, failed or cancelled)."""
        self.waiting = False
        self.settled.set()


class KeyState:
    """This process's view of one resource; dropped as soon as it is idle."""

    __slots__ = (
        "active", "batch", "holders", "keys", "on_change", "published", "queue", "remote",
        "resource", "ticket_pending", "ticket_session",
    )  # fmt: skip

    def __init__(
        self, resource: str, keys: Keys, on_change: Callable[[KeyState], None] | None = None
    ) -> None:
        self.resource = resource
        self.keys = keys
        self.holders: dict[Grant, None] = {}  # grants of this process, in grant order
        self.queue: deque[Request] = deque()
        self.active: Request | None = None
        self.batch: list[Request] = []  # taken from the queue to be granted with ``active``
        self.remote: set[Request] = set()  # bypassing requests (``can_bypass``)
        # The queue's length as published for other processes (``postgres/_tickets.py``).
        self.on_change = on_change  # called whenever the queue's length changed
        self.published = 0
        self.ticket_session: Session | None = None
        self.ticket_pending = False  # a change waits for the next publication

    @property
    def idle(self) -> bool:
        """No holder, nobody deciding, nobody queued, nothing published."""
        return (
            not self.holders
            and self.active is None
            and not self.remote
            and not self.queue
            and not self.batch
            and not self.published
            and not self.ticket_pending
        )

    def compatible(self, shared: bool, capacity: int | None) -> bool:
        """Could this process's own holders coexist with such a request?

        Advisory locks are re-entrant per session and a session never conflicts with
        itself, so this check, not the server, keeps this process's requests apart.
        """
        if not self.holders:
            return True
        if capacity is not None:
            return len(self.holders) < capacity
        return shared and all(grant.shared for grant in self.holders)

    def slots_on(self, session: Session) -> list[int]:
        """Semaphore slots of this resource that ``session`` already holds."""
        slots = []
        for grant in self.holders:
            hold = grant.handle
            if hold.session is session and hold.slot is not None:  # type: ignore[attr-defined]
                slots.append(hold.slot)  # type: ignore[attr-defined]
        return slots

    def deciders(self) -> list[Request]:
        """The requests of this process talking to the server: the head and bypassers."""
        active = self.active
        return [active, *self.remote] if active is not None else list(self.remote)

    def can_bypass(self) -> bool:
        """May a new request go to the server queue now, beside the head, on its own spare?

        Only while nobody of this process waits locally and every request ahead of it has
        its spare already: so it cannot overtake a request of its own process, and it
        takes its place among other processes' requests when it arrives (exact FIFO for
        requests that do not arrive in a burst). Otherwise it queues locally.
        """
        if self.queue or self.batch:
            return False
        return all(r.waiting and r.session is not None for r in self.deciders())

    def waiting(self) -> int:
        """Requests of this process waiting on the resource."""
        waiting = len(self.queue) + len(self.batch)
        return waiting + sum(r.waiting for r in self.deciders())

    def hidden_waiting(self) -> int:
        """This process's waiting requests that ``pg_locks`` does not show.

        The local queue, plus requests queued for a spare session (the spare budget is
        spent): what ``postgres/_tickets.py`` publishes.
        """
        return len(self.queue) + sum(r.in_line for r in self.deciders())

    def changed(self) -> None:
        """Something ``hidden_waiting`` counts may have changed: tell the publisher."""
        if self.on_change is not None:
            self.on_change(self)

    def take_batch(self, request: Request) -> list[Request]:
        """Take the queued requests that can be granted together with ``request``.

        Adjacent shared requests, or adjacent semaphore requests of the same capacity as
        far as free capacity (as this process sees it) allows; never an exclusive one.
        """
        if not request.shared or self.batch or request.bypass:
            return []
        room = None if request.capacity is None else request.capacity - len(self.holders) - 1
        queue = self.queue
        while queue and queue[0].shared and queue[0].capacity == request.capacity:
            if room is not None and len(self.batch) >= room:
                break
            follower = queue.popleft()
            if follower.turn is not None and not follower.turn.done():
                self.batch.append(follower)
        if self.batch:
            self.changed()
        return list(self.batch)

    def hand_out(self, grants: list[Grant]) -> list[Grant]:
        """Give ``grants`` to the batch in order; requeue the rest; return unwanted grants.

        A follower cancelled while the statement ran does not take its grant: that grant
        is returned for release.
        """
        batch, self.batch = self.batch, []
        unwanted = []
        for follower, grant in zip(batch, grants, strict=False):
            if follower.turn is not None and not follower.turn.done():
                follower.grant = grant
                follower.turn.set_result(None)
            else:
                unwanted.append(grant)
        unwanted.extend(grants[len(batch) :])
        requeued = False
        for follower in reversed(batch[len(grants) :]):
            if follower.turn is not None and not follower.turn.done():
                self.queue.appendleft(follower)  # not granted: back to the front, in order
                requeued = True
        if requeued:
            self.changed()
        return unwanted

    async def enqueue(self, request: Request) -> None:
        """Wait until ``request`` is the active one (FIFO among this process's requests)."""
        turn = request.turn = asyncio.get_running_loop().create_future()
        self.queue.append(request)
        self.changed()
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                if request.grant is None:
                    self.advance(request)  # the turn came with the cancellation: pass it on
            elif request in self.queue:
                self.queue.remove(request)
                self.changed()
            raise

    def advance(self, request: Request) -> None:
        """``request`` is done deciding: make the next queued request active."""
        if self.active is request:
            self.active = None
        changed = False
        while self.active is None and self.queue:
            following = self.queue.popleft()
            changed = True
            if following.turn is not None and not following.turn.done():
                self.active = following
                # It has waited and still does, on its way to the server queue: counted
                # as waiting from the local queue to the server's (inspect, max_waiting).
                following.waiting = True
                following.turn.set_result(None)
        if changed:
            self.changed()


class KeyStates:
    """The one owner of this process's :class:`KeyState` per resource.

    A state is made on first use and dropped as soon as it is idle (``drop_if_idle``), so
    the map holds only the keys someone of this process holds, decides on or waits for.
    """

    __slots__ = ("_namespace", "_states", "on_change")

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._states: dict[str, KeyState] = {}
        # Given to every new state (``KeyState.on_change``): the queue-length publisher.
        self.on_change: Callable[[KeyState], None] | None = None

    def __len__(self) -> int:
        return len(self._states)

    def get(self, resource: str) -> KeyState | None:
        """The state of ``resource`` if this process has one now."""
        return self._states.get(resource)

    def state(self, resource: str) -> KeyState:
        """The state of ``resource``, made if there is none."""
        state = self._states.get(resource)
        if state is None:
            keys = keys_for(self._namespace, resource)
            state = self._states[resource] = KeyState(resource, keys, self.on_change)
        return state

    def drop_if_idle(self, state: KeyState) -> None:
        """Forget ``state`` if nobody of this process holds, decides on or waits for it."""
        if state.idle and self._states.get(state.resource) is state:
            del self._states[state.resource]

    def forget_holder(self, grant: Grant) -> None:
        """``grant`` is no longer held (released or lost): take it off its key's holders."""
        state = self._states.get(grant.resource)
        if state is not None:
            state.holders.pop(grant, None)
            self.drop_if_idle(state)
