"""The inbox on a Redis Cluster: sharded pub/sub, one listener connection per master.

Classic pub/sub on a cluster broadcasts every message to every node over the cluster bus,
and ``PUBLISH`` then counts only the receivers on the publishing node, which would break
the dead-waiter check of ``_lib.lua`` (a live waiter subscribed elsewhere would count 0).
So on a cluster a grant goes out by ``SPUBLISH`` on the lock's own *shard channel*,
``agentlocks:inbox:{<lock tag>}:<coordinator id>``: in the lock's slot, it stays on that
slot's shard, and ``SPUBLISH`` counts exactly the subscribers on its master.

A coordinator subscribes (``SSUBSCRIBE``) to the shard channel of a lock before its first
request on that lock may queue, on a listener connection of its own to that slot's master
(one per master, made on first need): waiting still costs no connection per task. The same
invariant as on one server holds (``redis/_waiting.py``): a request is queued only while
its channel's subscription is confirmed.

A subscription ends when its node's connection breaks (a failover) or when the node stops
owning the slot (a migration: Redis answers with a ``sunsubscribe`` of its own). Then the
inbox's ``drops`` grows, every waiter on the lost channels subscribes again at the slot's
new master, and every waiter re-checks its request on the server: a grant published in
between was skipped (nobody heard it), and the waiter queues again (``Skipped``).
Channels nobody waits on are unsubscribed once they outnumber the wanted ones, so the
subscriptions stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from redis.exceptions import ResponseError

from agentlocks._tasks import TaskSupervisor
from agentlocks.errors import BackendError

from ._scripts import LockKeys, shard_channel

__all__ = ["ShardInbox"]

logger = logging.getLogger("agentlocks")

#: Seconds between resubscription attempts: first, and at most.
RETRY_DELAY = (0.05, 1.0)
#: Attempts at subscribing one channel (each after a MOVED or a lost connection).
ATTEMPTS = 5


class _Waiting(Protocol):
    keys: LockKeys


class _Listener:
    """One listener connection to one master, and what it is subscribed to."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.task: asyncio.Task[None] | None = None
        self.channels: set[bytes] = set()
        self.pending: deque[asyncio.Future[None]] = deque()  # SSUBSCRIBEs sent, in order
        self.leaving: Counter[bytes] = Counter()  # SUNSUBSCRIBEs we sent, not yet answered


class ShardInbox:
    """Grants of this coordinator on a Redis Cluster (see the module docstring)."""

    def __init__(
        self,
        link: Any,
        coordinator_id: str,
        deliver: Callable[[str, int], None],
        resubscribed: Callable[[], None],
        waiters: Mapping[str, _Waiting],
        tasks: TaskSupervisor,
    ) -> None:
        self._link = link  # _link.Link with .cluster set
        self._id = coordinator_id
        self._deliver = deliver
        self._resubscribed = resubscribed
        self._waiters = waiters
        self._tasks = tasks
        self.drops = 0  # subscriptions lost (connection broke, slot moved) since the start
        self._ready: dict[bytes, str] = {}  # confirmed channel -> its master's name
        self._listeners: dict[str, _Listener] = {}
        self._opening: dict[str, asyncio.Future[_Listener]] = {}
        self._healer: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def ready(self) -> bool:
        """Whether any channel is subscribed (see :meth:`ready_for`, what counts)."""
        return bool(self._ready)

    def ready_for(self, keys: LockKeys) -> bool:
        """True while the channel of lock ``keys`` is subscribed: a grant cannot be missed."""
        return shard_channel(keys, self._id) in self._ready

    async def start(self, keys: LockKeys | None = None) -> None:
        """Subscribe to the channel of lock ``keys`` at its master; ``BackendError`` if not."""
        if keys is None:
            return
        channel = shard_channel(keys, self._id)
        failure: BaseException | None = None
        for _ in range(ATTEMPTS):
            if channel in self._ready:
                return
            try:
                await self._subscribe(channel)
                return
            except ResponseError as exc:  # MOVED: the slot map is stale
                failure = exc
                await self._link.cluster.refresh()
            except (OSError, ConnectionError, BackendError) as exc:
                failure = exc
                await asyncio.sleep(RETRY_DELAY[0])
            except Exception as exc:  # redis-py's errors (RedisError): the network
                failure = exc
                await asyncio.sleep(RETRY_DELAY[0])
        assert failure is not None
        if isinstance(failure, BackendError):
            raise failure
        raise self._link.error(failure) from failure

    async def _subscribe(self, channel: bytes) -> None:
        node = await self._link.cluster.master_for(channel)
        listener = await self._listener(node)
        self._prune(listener)
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        listener.pending.append(confirmed)
        await listener.conn.send_command("SSUBSCRIBE", channel)
        async with asyncio.timeout(self._link.connect_timeout + self._link.socket_timeout):
            await confirmed
        if self._listeners.get(node.name) is listener:
            listener.channels.add(channel)
            self._ready[channel] = node.name

    async def _listener(self, node: Any) -> _Listener:
        listener = self._listeners.get(node.name)
        if listener is not None:
            return listener
        opening = self._opening.get(node.name)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[_Listener] = asyncio.get_running_loop().create_future()
        self._opening[node.name] = future
        try:
            conn = await self._link.open_subscriber(node.connection_class, node.connection_kwargs)
            listener = _Listener(conn)
            self._listeners[node.name] = listener
            listener.task = self._tasks.spawn(
                self._read(node.name, listener), name="redis cluster inbox reader"
            )
            future.set_result(listener)
            return listener
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # seen: the other openers get it through the shield
            raise
        finally:
            del self._opening[node.name]

    def _prune(self, listener: _Listener) -> None:
        # Bounded state: channels nobody waits on are left once they outnumber the wanted.
        wanted = {shard_channel(w.keys, self._id) for w in self._waiters.values()}
        if len(self._ready) <= 2 * len(wanted) + 64:
            return
        for channel in [c for c in listener.channels if c not in wanted]:
            # Not ready from now on: a request queued later subscribes again (after this
            # SUNSUBSCRIBE on the same connection, so the server keeps the order).
            listener.channels.discard(channel)
            self._ready.pop(channel, None)
            listener.leaving[channel] += 1
            self._tasks.spawn(
                listener.conn.send_command("SUNSUBSCRIBE", channel), name="redis sunsubscribe"
            )

    async def _read(self, name: str, listener: _Listener) -> None:
        try:
            while True:
                try:
                    frame = await listener.conn.read_response()
                except ResponseError as exc:  # an SSUBSCRIBE refused (MOVED)
                    if listener.pending:
                        listener.pending.popleft().set_exception(exc)
                    continue
                self._handle(listener, frame)
        except Exception as exc:  # the connection broke: any error means the same
            logger.warning("redis cluster inbox connection lost: %s", type(exc).__name__)
        finally:
            if self._listeners.get(name) is listener:
                del self._listeners[name]
            for confirmed in listener.pending:
                if not confirmed.done():
                    confirmed.set_exception(BackendError("the listener connection was lost"))
                    confirmed.exception()
            self._lost(listener.channels)
            listener.channels.clear()
            with contextlib.suppress(Exception):
                await listener.conn.disconnect()

    def _handle(self, listener: _Listener, frame: Any) -> None:
        if not isinstance(frame, list) or len(frame) != 3:
            return
        kind, channel, data = frame
        kind = kind.decode() if isinstance(kind, bytes) else kind
        channel = channel.encode() if isinstance(channel, str) else channel
        if kind == "smessage":
            text = data.decode() if isinstance(data, bytes) else str(data)
            request_id, _, token = text.partition(" ")
            self._deliver(request_id, int(token))
        elif kind == "ssubscribe":
            if listener.pending:
                listener.pending.popleft().set_result(None)
        elif kind == "sunsubscribe":
            if listener.leaving[channel] > 0:
                listener.leaving[channel] -= 1
                if not listener.leaving[channel]:
                    del listener.leaving[channel]
            elif channel in listener.channels:
                # The node no longer owns the slot (migrated, or failed over).
                listener.channels.discard(channel)
                self._lost({channel})

    def _lost(self, channels: set[bytes]) -> None:
        if not channels or self._closed:
            return
        for channel in channels:
            self._ready.pop(channel, None)
        self.drops += 1
        if self._healer is None or self._healer.done():
            self._healer = self._tasks.spawn(self._heal(), name="redis cluster resubscribe")

    async def _heal(self) -> None:
        """Subscribe again, at their slots' masters now, to every channel still waited on."""
        delay, longest = RETRY_DELAY
        while not self._closed:
            missing = {
                shard_channel(w.keys, self._id): w.keys
                for w in list(self._waiters.values())
                if not self.ready_for(w.keys)
            }
            try:
                for keys in missing.values():
                    await self.start(keys)
            except BackendError as exc:
                logger.warning("redis cluster inbox resubscription failed: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
                continue
            # Grants published while a channel was down were missed: look them up now.
            self._resubscribed()
            return

    async def aclose(self) -> None:
        """Stop every listener and close its connection."""
        self._closed = True
        self._ready.clear()
        tasks = [t for t in (self._healer, *(x.task for x in self._listeners.values())) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
