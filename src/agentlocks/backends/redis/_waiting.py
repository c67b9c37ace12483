"""How a queued Redis request waits: pushed grants on one inbox, no polling.

Connection model. Waiting costs no connection per waiting task. Each backend (one per
coordinator) has one *inbox*: a pub/sub connection subscribed to its own channel
``agentlocks:inbox:<coordinator id>``. The script that grants a queued request (a release,
a cancelled waiter leaving, a lease found expired) publishes ``"<request id> <token>"`` on
the channel of the request's coordinator; the inbox task resolves that request's future,
and the waiting task runs. Short script calls borrow a pooled command connection for one
round trip each, so a process with any number of waiters uses the pool plus one
connection.

Missed messages. Pub/sub is fire-and-forget, so the inbox is not trusted alone: the grant
itself is recorded in the lock's keys. Whenever the inbox (re)subscribes, every local
waiter re-checks its state on the server at once, so a grant published while the inbox was
down is still collected.

Keep-alive. A queued request has a server-side deadline (its lease TTL), so a waiter whose
process died leaves the queue by itself. The *keeper* task extends the deadlines of the
live local waiters, all in one pipelined round trip every TTL/3. The same call reports a
grant the inbox missed, and hands the lock on if its holder's lease ran out without a
release (a crashed holder): for that, a waiter re-checks when the first holder's lease is
due to end, a time the server tells it. Both are timers at known deadlines, not polling;
the hand-off itself is always pushed.

Dead waiters. The script that grants a queued request publishes the grant and reads how
many connections received it; nobody (0) means the waiter's coordinator has no inbox
subscribed any more: its process died (or its inbox connection dropped). The grant is
then taken back and the next waiter served in the same script (``_lib.lua``), so a dead
waiter never holds the queue up for a lease. Invariant that keeps a *live* waiter from
being skipped: a request is queued only while its coordinator's inbox subscription is
confirmed (``acquire.lua``'s ``enqueue`` flag is 1 only if ``Inbox.ready`` held when the
request was registered, i.e. after SUBSCRIBE's reply was read, so the server processed
the SUBSCRIBE first), and the inbox stays subscribed for as long as it is connected. So
a live waiter is skipped only if its inbox connection dropped meanwhile; then, once it
subscribes again, its re-check finds its request gone, and because the inbox dropped
since the request was registered, the waiter queues again (at the tail: it lost its
place with its connection) instead of failing (:class:`Skipped`).

Background tasks. The inbox reader and the keep-alive are started with the coordinator's
``TaskSupervisor`` (never a bare ``create_task``): a failure is logged on the
``agentlocks`` logger, and the keep-alive failing fails its waiters rather than leaving
them to wait unrefreshed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agentlocks._tasks import TaskSupervisor
from agentlocks.errors import BackendError

from ._flow import Gate
from ._scripts import LockKeys

__all__ = ["Inbox", "Skipped", "Turns", "WaitRoom", "Waiter"]

logger = logging.getLogger("agentlocks")

#: Seconds between reconnection attempts of the inbox: first, and at most.
RECONNECT_DELAY = (0.05, 1.0)


class Turns:
    """One acquire at a time per resource on its way to the server (FIFO per process).

    Invariant: requests of one process reach the server's queue in the order they were
    made. Concurrent calls may travel on different pooled connections, and the server
    serves sockets in its own order, so the acquire script of a resource is sent only
    once the previous one's reply is back. Uncontended, this costs a dict entry.
    """

    __slots__ = ("_gates",)

    def __init__(self) -> None:
        self._gates: dict[str, Gate] = {}  # present while someone has the resource's turn

    def take_now(self, resource: str) -> bool:
        """Take the turn of ``resource`` if nobody has it; never suspends."""
        if resource in self._gates:
            return False
        self._gates[resource] = Gate(0)  # ours: no place left
        return True

    async def take(self, resource: str) -> None:
        """Wait for the turn of ``resource`` (after :meth:`take_now` said no)."""
        await self._gates[resource].enter()

    def give(self, resource: str) -> None:
        """End our turn: the next in line takes it, or the resource forgets its gate."""
        if not self._gates[resource].leave():
            del self._gates[resource]


class Skipped(Exception):  # a signal between our own tasks: never reaches the user
    """The request left the queue while this process's inbox was down: queue it again.

    A hand-off found nobody subscribed to our inbox (it was reconnecting) and skipped the
    request as a dead waiter's. The waiter is alive, so it is queued afresh.
    """


class Waiter:
    """One queued request of this process."""

    __slots__ = (
        "confirmed",
        "drops",
        "due",
        "future",
        "keys",
        "last_ok",
        "request",
        "request_id",
        "ttl_ms",
    )

    def __init__(self, request_id: str, keys: LockKeys, request: str, drops: int) -> None:
        self.request_id = request_id
        # The inbox's drop count when registered: if it changed, a hand-off may have
        # skipped this request while nobody was subscribed (see Skipped).
        self.drops = drops
        self.keys = keys
        self.request = request  # "id|mode|capacity|ttl": its queue member
        self.ttl_ms = int(request.rpartition("|")[2])
        #: Resolved with (token, monotonic time the lease started) once granted.
        self.future: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
        self.last_ok = time.monotonic()  # last time the server confirmed the request queued
        self.due = self.last_ok + self.interval  # next keep-alive
        # Known to be in the server's queue. Until then a keep-alive could overtake the
        # acquire script on another connection and find nothing: it must not be sent.
        self.confirmed = False

    @property
    def interval(self) -> float:
        """Seconds between keep-alives: a third of the queue deadline."""
        return self.ttl_ms / 3000


OpenInbox = Callable[[], Awaitable[Any]]
"""Connect a new inbox connection and subscribe it; raise ``BackendError`` on failure."""

Refresh = Callable[[Sequence[Waiter]], Awaitable[list[Any]]]
"""Run ``refresh.lua`` for each waiter in one round trip; one reply (or exception) each."""


MakeInbox = Callable[[Callable[[str, int], None], Callable[[], None], dict[str, Waiter]], Any]
"""Build another inbox (a cluster's, ``redis/_shards.py``) from deliver, recheck, waiters."""


class Inbox:
    """The pub/sub connection on which this process's grants arrive."""

    def __init__(
        self,
        open_inbox: OpenInbox,
        deliver: Callable[[str, int], None],
        resubscribed: Callable[[], None],
        wanted: Callable[[], bool],
        tasks: TaskSupervisor,
    ) -> None:
        self._tasks = tasks
        self.drops = 0  # times the subscription was lost (or replaced) since the start
        self._open = open_inbox
        self._deliver = deliver
        self._resubscribed = resubscribed
        self._wanted = wanted
        self._ready = False
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def ready(self) -> bool:
        """True while subscribed: a request queued now cannot miss its grant message."""
        return self._ready

    def ready_for(self, keys: LockKeys) -> bool:
        """:attr:`ready` (one inbox serves every lock; a cluster's has one per lock)."""
        return self._ready

    async def start(self, keys: LockKeys | None = None) -> None:
        """Subscribe now if not subscribed; ``BackendError`` if the server cannot be reached."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._ready:
                return
            # A reader task still retrying in the background is replaced by this attempt,
            # whose failure the caller sees.
            await self._stop_task()
            conn = await self._open()
            self._ready = True
            self._task = self._tasks.spawn(self._read(conn), name="redis inbox reader")

    async def aclose(self) -> None:
        """Stop reading and close the connection."""
        self._ready = False
        await self._stop_task()

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self.drops += 1  # its subscription ends with it
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read(self, conn: Any) -> None:
        try:
            while True:
                try:
                    while True:
                        self._handle(await conn.read_response())
                except Exception as exc:  # the connection broke: any error means the same
                    self._ready = False
                    self.drops += 1
                    logger.warning("redis inbox connection lost: %s", type(exc).__name__)
                    await _disconnect(conn)
                conn = await self._reconnect()
                if conn is None:
                    return  # nobody waits: the next waiting acquire reconnects
                self._ready = True
                # Grants published while we were away were missed: look them up now.
                self._resubscribed()
        finally:
            self._ready = False
            await _disconnect(conn)

    async def _reconnect(self) -> Any:
        delay, longest = RECONNECT_DELAY
        while self._wanted():
            try:
                return await self._open()
            except BackendError as exc:
                logger.warning("redis inbox reconnection failed: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)
        return None

    def _handle(self, frame: Any) -> None:
        # RESP2 pub/sub frames: [b"message", channel, data], [b"subscribe", channel, n], ...
        if not isinstance(frame, list) or len(frame) != 3:
            return
        kind, _, data = frame
        if kind in (b"message", "message"):
            text = data.decode() if isinstance(data, bytes) else str(data)
            request_id, _, token = text.partition(" ")
            self._deliver(request_id, int(token))


class WaitRoom:
    """The local waiters of one backend, their inbox and their keep-alive task."""

    def __init__(
        self,
        open_inbox: OpenInbox,
        refresh: Refresh,
        tasks: TaskSupervisor,
        make_inbox: MakeInbox | None = None,
    ) -> None:
        self._refresh = refresh
        self._tasks = tasks
        self.waiters: dict[str, Waiter] = {}
        self.inbox: Any = (
            Inbox(open_inbox, self._deliver, self._recheck_all, self._wanted, tasks)
            if make_inbox is None
            else make_inbox(self._deliver, self._recheck_all, self.waiters)
        )
        self._keeper: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._sleep_until = math.inf

    def register(self, request_id: str, keys: LockKeys, request: str) -> Waiter:
        """Expect a grant for ``request_id``: call before the request can reach the queue."""
        waiter = self.waiters[request_id] = Waiter(request_id, keys, request, self.inbox.drops)
        return waiter

    def unregister(self, request_id: str) -> None:
        """Forget ``request_id`` (granted, refused or abandoned)."""
        waiter = self.waiters.pop(request_id, None)
        if waiter is not None and waiter.future.done() and not waiter.future.cancelled():
            waiter.future.exception()  # mark a failure as seen: nobody else will look

    def queued(self, waiter: Waiter, first_expiry_ms: int) -> None:
        """The server queued ``waiter``; schedule its keep-alive (and crash check)."""
        now = time.monotonic()
        waiter.confirmed = True
        waiter.last_ok = now
        waiter.due = now + self._next_check(waiter, first_expiry_ms)
        if self._keeper is None or self._keeper.done():
            if self._tasks.closed:
                return  # closing: aclose() has failed (or is failing) every waiter
            self._keeper = self._tasks.spawn(self._keep(), name="redis waiter keep-alive")
        elif waiter.due < self._sleep_until and self._wake is not None:
            self._wake.set()

    def fail_all(self, error: BackendError) -> list[Waiter]:
        """Fail every waiter with ``error``; return them (their queue entries remain)."""
        waiters = list(self.waiters.values())
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        return waiters

    async def aclose(self) -> None:
        """Stop the keeper and the inbox."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None and not keeper.done():
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await self.inbox.aclose()

    # -- internals ---------------------------------------------------------------------------

    def _wanted(self) -> bool:
        return bool(self.waiters)

    def _deliver(self, request_id: str, token: int) -> None:
        waiter = self.waiters.get(request_id)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result((token, time.monotonic()))

    def _recheck_all(self) -> None:
        for waiter in self.waiters.values():
            waiter.due = 0.0
        if self._wake is not None:
            self._wake.set()

    @staticmethod
    def _next_check(waiter: Waiter, first_expiry_ms: int) -> float:
        # The regular keep-alive, or just after the first holder's lease would end if it
        # is not renewed (its holder may have crashed), whichever comes first.
        delay = waiter.interval
        if first_expiry_ms >= 0:
            delay = min(delay, first_expiry_ms / 1000 + 0.002)
        return delay

    async def _keep(self) -> None:
        try:
            await self._keep_alive()
        except Exception as exc:
            # A bug, not the network (_refresh_batch absorbs BackendError): the waiters
            # would wait unrefreshed until their deadlines and then hang. Fail them loudly;
            # the supervisor logs the cause.
            error = BackendError(f"the Redis waiters' keep-alive failed: {exc!r}")
            error.__cause__ = exc
            self.fail_all(error)
            raise

    async def _keep_alive(self) -> None:
        self._wake = asyncio.Event()
        while True:
            pending = [w for w in self.waiters.values() if w.confirmed and not w.future.done()]
            if not pending:
                return  # restarted by the next queued request
            now = time.monotonic()
            soonest = min(w.due for w in pending)
            if soonest > now:
                self._sleep_until = soonest
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), soonest - now)
                self._sleep_until = math.inf
                continue
            # Waiters within half an interval of their turn ride along: fewer round trips.
            await self._refresh_batch([w for w in pending if w.due - w.interval / 2 <= now])

    async def _refresh_batch(self, batch: list[Waiter]) -> None:
        for waiter in batch:
            waiter.due = math.inf  # in flight: not picked again until answered
        sent = time.monotonic()
        try:
            replies = await self._refresh(batch)
        except BackendError as exc:
            replies = [exc] * len(batch)
        now = time.monotonic()
        for waiter, reply in zip(batch, replies, strict=True):
            if waiter.future.done() or self.waiters.get(waiter.request_id) is not waiter:
                continue
            if isinstance(reply, BaseException):
                if now - waiter.last_ok >= waiter.ttl_ms / 1000:
                    # The server has not confirmed this request for a whole deadline: it
                    # may be gone. Fail loudly rather than wait for ever.
                    error = BackendError(f"lost contact with the server while queued: {reply}")
                    error.__cause__ = reply
                    waiter.future.set_exception(error)
                else:
                    waiter.due = now + min(1.0, waiter.interval)
                continue
            code = int(reply[0])
            if code == 1:
                # Granted, and the inbox message was missed. The lease started at most
                # ttl - left ms before this refresh was sent.
                started = sent - (waiter.ttl_ms - int(reply[2])) / 1000
                waiter.future.set_result((int(reply[1]), started))
            elif code == 0:
                waiter.last_ok = sent
                waiter.due = now + self._next_check(waiter, int(reply[1]))
            elif waiter.drops != self.inbox.drops:
                # Our inbox dropped since the request was queued, so a hand-off may have
                # skipped it as a dead waiter's (see the module docstring): queue again.
                waiter.future.set_exception(Skipped())
            else:
                waiter.future.set_exception(
                    BackendError(
                        "the queued request vanished from the Redis server "
                        "(server restarted or flushed, or its deadline passed)"
                    )
                )


async def _disconnect(conn: Any) -> None:
    with contextlib.suppress(Exception):
        await conn.disconnect()
