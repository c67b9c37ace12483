"""``redis://`` and ``rediss://``: fair, pushed, fenced, self-expiring locks on Redis.

Key layout. All state of one lock (or semaphore, or registry lock) lives in four keys
sharing one hash tag, ``agentlocks:{<tag>}:h|q|d|t``, where ``<tag>`` is a hash of the
namespace and the resource. User keys never appear in key names, so braces in them cannot
split a lock across cluster slots, and every script touches one slot. ``lua/_lib.lua``
describes them: holders by lease expiry (``h``), the FIFO queue (``q``), queue deadlines
(``d``) and the last token (``t``). Records are the members themselves
(``"<request id>|<mode>|<token>"`` for a holder), which the owning coordinator can rebuild,
so no lookup table is kept. A registry's generation is one more key beside its lock's,
``agentlocks:{<tag>}:g``.

Scripts. Every state change is one Lua script (``lua/*.lua``), so it is atomic: grant or
queue (``acquire``), release or withdraw, hand-off included (``release``), extend leases
(``renew``), keep a queued request alive (``refresh``). They are called by SHA and sent
again after ``NOSCRIPT`` (a restarted server). Uncontended, an acquire and a release are
one round trip each, like ``SET NX`` and a compare-and-delete.

Hand-off. A release grants the next waiters in the same script (shared requests adjacent
at the head together; a queued exclusive request blocks later shared ones; a semaphore
admits up to its capacity) and publishes each grant to the waiter's coordinator. A
releaser that re-acquires at once finds its key taken and queues behind: no barging.
Requests of one process reach the queue in call order (``Turns``).

Connection model. One pool of command connections (``max_connections``, default 32; a
script call borrows one for a round trip) plus one pub/sub *inbox* connection per backend,
on which its grants arrive: waiting costs no connection per task (``redis/_waiting.py``).
A user's own client (``connect(redis=client)``) is used for commands and never closed; the
inbox is then one extra connection made with that client's settings (``redis/_link.py``).

Tokens. ``max(server time in µs, last token + 1)``: strictly increasing per key across
all clients and restarts of clients. The last token outlives the other keys by 10 minutes,
so tokens keep growing across idle periods and server clock steps back of up to that much.

Expiry. Every lock key has a TTL: a holder's lease (``lease_ttl``), renewed by the coordinator's
batched renewal (one pipelined round trip per batch); a queued request's deadline (its
``lease_ttl`` too), renewed by the waiter's keep-alive. A lock's keys expire when its last
lease and deadline run out. A crashed holder's lock reaches the next waiter when its lease
ends: waiters re-check at that moment, which the server tells them. A waiter whose
process died is skipped at hand-off (nobody receives its grant; ``redis/_waiting.py``).
A registry's generation has no TTL (one small key per registry name): one that expired
would go backwards. It shares the hash tag of the registry's lock, so that a publish is
fenced by the writer's grant in one script. Like every other key it is lost with the
server's dataset (a restart without persistence, a failover without replication): it then
reads 0 until the next write.

Errors. Every driver failure is a ``BackendError`` (driver error as ``__cause__``, no
password in messages), raised within ``connect_timeout`` / ``socket_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

from agentlocks._tasks import TaskSupervisor, finish
from agentlocks._url import Settings
from agentlocks.backends._base import (
    Grant,
    HolderInfo,
    LostCallback,
    SignalCallback,
    describe,
)
from agentlocks.backends._capabilities import HeadSwap
from agentlocks.errors import BackendError, Busy, QueueFull

from ._heads import drop_heads, swap_head
from ._link import OPTION_NAMES, Link
from ._names import acquire_keys, find_resources
from ._scripts import (
    ACQUIRE,
    GENERATION,
    INBOX_PREFIX,
    INSPECT,
    REFRESH,
    RELEASE,
    RENEW,
    VERIFY,
    Call,
    LockKeys,
    generation_key,
    lock_keys,
)
from ._shards import ShardInbox
from ._signals import RedisSignals
from ._waiting import Skipped, Turns, Waiter, WaitRoom

__all__ = ["RedisBackend", "RedisHandle"]

logger = logging.getLogger("agentlocks")


@dataclass(frozen=True, slots=True)
class RedisHandle:
    """What a Redis grant carries: the records that identify it on the server."""

    request_id: str
    keys: LockKeys
    request: str
    """The request's queue member: ``"<request id>|<x or s>|<capacity>|<ttl ms>"``."""
    member: str
    """The grant's holder member in the lock's ``h`` key: ``"<request id>|<x or s>|<token>"``."""


class RedisBackend:
    """Locks and semaphores on one Redis server; see the module docstring for the design."""

    leases_expire: ClassVar[bool] = True
    shared_state: ClassVar[bool] = True
    option_names: ClassVar[frozenset[str]] = OPTION_NAMES
    # release() reaches the server even if its caller is cancelled, repeatedly: a cancelled
    # attempt is sent again under finish() (see release), so the coordinator awaits it
    # directly, without a task per release.
    release_finishes: ClassVar[bool] = True

    def __init__(self, settings: Settings, on_lost: LostCallback, tasks: TaskSupervisor) -> None:
        self._namespace = settings.namespace
        self._tasks = tasks  # owns this backend's background tasks
        self._redacted_url = settings.redacted_url
        self._on_lost = on_lost
        self._id = secrets.token_hex(8)  # this backend's coordinator id
        self._link = Link(settings, client_name=f"agentlocks:{self._id}", tasks=tasks)
        self._ids = itertools.count(1)
        self._held: dict[str, Grant[RedisHandle]] = {}  # request id -> grant, released by aclose()
        self._turns = Turns()
        shards = self._link.deployment.kind == "cluster"
        self._room = WaitRoom(
            self._open_inbox, self._refresh, tasks, self._shard_inbox if shards else None
        )
        self._signals = RedisSignals(self._link, self._namespace, tasks)  # redis/_signals.py
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"RedisBackend(url={self._redacted_url!r}, namespace={self._namespace!r}, "
            f"held={len(self._held)}, waiting={len(self._room.waiters)})"
        )

    @property
    def client_name(self) -> str:
        """The CLIENT SETNAME of this backend's own connections (the inbox adds ``:inbox``)."""
        return self._link.client_name

    # -- the Backend protocol ------------------------------------------------------------------

    async def acquire(
        self,
        resource: str,
        *,
        shared: bool,
        capacity: int | None,
        wait: bool,
        max_waiting: int | None,
        lease_ttl: float,
    ) -> Grant[RedisHandle]:
        keys = lock_keys(self._namespace, resource)
        named_keys, record = acquire_keys(self._namespace, resource)
        request_id = f"{self._id}:{next(self._ids)}"
        mode = "s" if shared else "x"
        request = f"{request_id}|{mode}|{capacity or 0}|{_ms(lease_ttl)}"
        flags = f"{1 if wait else 0}|{-1 if max_waiting is None else max_waiting}|"
        room, run = self._room, self._link.run
        waiter: Waiter | None = None
        sent = False
        try:
            if not self._turns.take_now(resource):
                await self._turns.take(resource)
            try:
                # Registered before the script can queue the request, so that a grant
                # published before the script's reply reaches us still finds its waiter.
                if wait and room.inbox.ready_for(keys):
                    waiter = room.register(request_id, keys, request)
                started, sent = time.monotonic(), True
                reply = await run(
                    ACQUIRE, named_keys, request, flags + ("1" if waiter else "0"), record
                )
                if reply[0] == -3:
                    # Must wait, but the inbox is not subscribed (the first wait of this
                    # backend, or it is reconnecting): a grant published now would be lost.
                    await room.inbox.start(keys)
                    waiter = room.register(request_id, keys, request)
                    started = time.monotonic()
                    reply = await run(ACQUIRE, named_keys, request, flags + "1", record)
            finally:
                self._turns.give(resource)
            if reply[0] == 1:  # granted at once: the common case needs no await
                token = int(reply[1])
            else:
                token, started = await self._outcome(
                    resource, keys, request, flags, reply, waiter, started
                )
                if self._link.min_replicas:
                    await self._replicated(keys, f"{request_id}|{mode}|{token}", lease_ttl)
        except (Busy, QueueFull):
            room.unregister(request_id)  # refused before anything was stored
            raise
        except BaseException:
            room.unregister(request_id)
            if sent:
                # Invariant: nothing of this request survives a failed or cancelled
                # acquire. The script may have queued or granted it without our seeing
                # the reply, or the grant raced the cancellation; release.lua ends it.
                await self._withdraw(keys, request_id, request, lease_ttl)
            raise
        if waiter is not None:
            room.unregister(request_id)
        handle = RedisHandle(request_id, keys, request, f"{request_id}|{mode}|{token}")
        grant = Grant(resource, token, shared, lease_ttl, started, handle)
        self._held[request_id] = grant
        return grant

    async def _outcome(
        self,
        resource: str,
        keys: LockKeys,
        request: str,
        flags: str,
        reply: Any,
        waiter: Waiter | None,
        started: float,
    ) -> tuple[int, float]:
        code = int(reply[0])
        while code == 0 and waiter is not None:
            self._room.queued(waiter, int(reply[1]))
            try:
                return await waiter.future
            except Skipped:
                pass
            # Skipped as a dead waiter while our inbox was down (redis/_waiting.py): we
            # are alive, so queue again, as a new arrival (the place went with the inbox).
            await self._room.inbox.start(keys)
            if not self._turns.take_now(resource):
                await self._turns.take(resource)
            try:
                waiter = self._room.register(waiter.request_id, keys, request)
                started = time.monotonic()
                named_keys, record = acquire_keys(self._namespace, resource)
                reply = await self._link.run(ACQUIRE, named_keys, request, flags + "1", record)
            finally:
                self._turns.give(resource)
            code = int(reply[0])
            if code == 1:
                return int(reply[1]), started
        key = describe(resource)
        if code == -1:
            raise Busy(f"{key!r} is held", key=key)
        if code == -2:
            raise QueueFull(f"{reply[1]} requests already wait on {key!r}", key=key)
        raise BackendError(f"unexpected reply from acquire.lua: {reply!r}")

    async def _replicated(self, keys: LockKeys, member: str, lease_ttl: float) -> None:
        # A hand-off grant was written by the releaser's script, on its connection. This
        # renewal writes on ours, and the WAIT after it (Link, min_replicas) covers every
        # earlier write too (replication keeps the primary's order): once it returns, the
        # grant is on min_replicas replicas, so a failover cannot forget it.
        if not int(await self._link.run(RENEW, keys, member, _ms(lease_ttl))):
            raise BackendError("the hand-off grant was gone before it was replicated")

    async def _withdraw(
        self, keys: LockKeys, request_id: str, request: str, lease_ttl: float
    ) -> None:
        if self._closed:
            return  # aclose() released or withdrew everything it knew of
        # Invariant: nothing of a cancelled request survives it. This runs while the caller
        # is being cancelled, possibly again and again (task-group aborts, nested
        # timeouts): finish() runs the withdrawal to its end in a task of its own, or the
        # request would block the key until its deadline. Bounded by the request's TTL:
        # by then its queue deadline (or a raced grant's lease) has run out anyway.
        await finish(self._withdraw_now(keys, request_id, request, lease_ttl))

    async def _withdraw_now(
        self, keys: LockKeys, request_id: str, request: str, lease_ttl: float
    ) -> None:
        try:
            await self._link.run_within(lease_ttl, RELEASE, keys, request_id, request)
        except BackendError as exc:
            logger.warning("could not withdraw a request; it expires by itself: %s", exc)

    async def release(self, grant: Grant[RedisHandle]) -> bool:
        handle = grant.handle
        self._held.pop(handle.request_id, None)
        # release.lua answers 0 when the grant was no longer there (expired, or the key
        # was given to someone else): that lease was lost, not released (guarantee 6).
        # Bounded by the lease's TTL: past it the server has freed the grant by itself,
        # so a silent network cannot hold the releasing block for a whole socket_timeout.
        #
        # Invariant (release_finishes): the release reaches the server even if our caller
        # is cancelled, once or again and again. The common case runs in the caller's own
        # task (no task, no extra loop turns per release). A cancellation can cut that
        # attempt anywhere: before its command was written (waiting for a connection),
        # or after (its reply unread; redis-py then drops the connection, and the server
        # may or may not have run it yet). Either way the release is sent once more under
        # finish(), which absorbs further cancels, and only then is the cancellation
        # raised: as with finish() alone, a caller that sees CancelledError has had its
        # release run. Sending it twice is harmless: the holder member carries the
        # grant's unique token, so a repeat finds nothing to remove and only hands on
        # what the lock's state already allows (release.lua is idempotent).
        try:
            reply = await self._link.run_within(
                grant.lease_ttl, RELEASE, handle.keys, handle.member
            )
        except asyncio.CancelledError as cancelled:
            # Cancelled again meanwhile: the first cancellation is raised, once.
            with contextlib.suppress(asyncio.CancelledError):
                await finish(self._release_again(handle, grant.lease_ttl))
            raise cancelled from None
        return int(reply) == 1

    async def _release_again(self, handle: RedisHandle, lease_ttl: float) -> None:
        try:
            await self._link.run_within(lease_ttl, RELEASE, handle.keys, handle.member)
        except BackendError as exc:  # the caller is being cancelled: nobody to raise it to
            logger.warning("could not release a lock; it expires by itself: %s", exc)

    async def renew(self, grants: Sequence[Grant[RedisHandle]]) -> Sequence[Grant[RedisHandle]]:
        calls = [(g.handle.keys, (g.handle.member, _ms(g.lease_ttl))) for g in grants]
        # Urgent: ahead of every call waiting for a connection, so that a busy pool cannot
        # make a lease miss its renewal. The coordinator bounds the call by the lease's
        # deadline and may cancel it mid-flight: the connection is then closed (redis-py
        # drops a connection whose reply was not read), and renew.lua is idempotent.
        replies = await self._link.batch(RENEW, calls, urgent=True)
        gone = []
        for grant, reply in zip(grants, replies, strict=True):
            if isinstance(reply, BaseException):
                raise self._link.error(reply) from reply
            if int(reply) == 0:
                gone.append(grant)
        return gone

    async def verify(self, grant: Grant[RedisHandle]) -> bool:
        handle = grant.handle
        return bool(await self._link.run(VERIFY, handle.keys, handle.member))

    async def inspect(self, resource: str) -> tuple[tuple[HolderInfo, ...], int]:
        reply = await self._link.run(INSPECT, lock_keys(self._namespace, resource))
        holders = sorted(
            (
                HolderInfo(token=int(token), shared=bool(int(shared)), age=int(age) / 1e6)
                for token, shared, age in zip(reply[1::3], reply[2::3], reply[3::3], strict=True)
            ),
            key=lambda holder: holder.token,
        )
        return tuple(holders), int(reply[0])

    async def keys(self, prefix: str) -> list[str]:
        """Resources named ``prefix...`` in use in this namespace (SCAN; ``redis/_names.py``)."""
        return await find_resources(
            self._link.command, self._link.pipeline, self._namespace, prefix
        )

    async def read_generation(self, name: str) -> int:
        key = generation_key(self._namespace, name)
        return int(await self._link.run(GENERATION, (key,)))

    async def publish_generation(
        self, name: str, generation: int, grant: Grant[RedisHandle]
    ) -> bool:
        handle = grant.handle
        keys = (handle.keys[0], generation_key(self._namespace, name))
        # Fenced: generation.lua writes only if the writer's grant is still held, in the
        # same atomic step (a writer whose lease was lost publishes nothing).
        return int(await self._link.run(GENERATION, keys, generation, handle.member)) >= 0

    async def swap_head(
        self, resource: str, field: str, expected: str | None, new: str, token: int | None,
        ttl: float,
    ) -> HeadSwap:  # fmt: skip
        return await swap_head(
            self._link, self._namespace, resource, field, expected, new, token, ttl
        )

    async def drop_heads(self, resource: str) -> None:
        await drop_heads(self._link, self._namespace, resource)

    async def signal(self, resource: str, kind: str, *, ttl: float, mark: int | None = None) -> int:
        return await self._signals.send(resource, kind, ttl, mark)

    def watch_signals(
        self, resource: str, deliver: SignalCallback
    ) -> AbstractAsyncContextManager[None]:
        return self._signals.watch(resource, deliver)

    async def clear_signal(self, resource: str, kind: str, mark: int) -> None:
        await self._signals.clear(resource, kind, mark)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Waiters fail at once, before any await; the rest runs to its end even if our
        # caller is cancelled meanwhile (the coordinator runs it under finish() too).
        waiters = self._room.fail_all(BackendError("the coordinator was closed while waiting"))
        await finish(self._close(waiters))

    async def _close(self, waiters: list[Waiter]) -> None:
        await self._signals.aclose()
        held, self._held = list(self._held.values()), {}
        ends: list[Call] = [(w.keys, (w.request_id, w.request)) for w in waiters]
        ends += [(g.handle.keys, (g.handle.member,)) for g in held]
        if ends and self._link.used:
            try:
                await self._link.batch(RELEASE, ends)
            except BackendError as exc:
                logger.warning("closing: grants left to expire by themselves: %s", exc)
        for grant in held:
            self._on_lost(grant)  # the lease ends here: its holder must hear it
        await self._room.aclose()
        await self._link.aclose()

    # -- waiting -------------------------------------------------------------------------------

    def _shard_inbox(
        self, deliver: Callable[[str, int], None], recheck: Callable[[], None], waiters: Any
    ) -> ShardInbox:
        return ShardInbox(self._link, self._id, deliver, recheck, waiters, self._tasks)

    async def _open_inbox(self) -> Any:
        return await self._link.open_inbox(INBOX_PREFIX + self._id)

    async def _refresh(self, waiters: Sequence[Waiter]) -> list[Any]:
        return await self._link.batch(REFRESH, [(w.keys, (w.request,)) for w in waiters])


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))
