"""``memory://``: the in-process backend (the embedded default).

State is one dict ``resource -> _Entry``; an entry exists only while its resource has a
holder or a waiter (guarantee 9). Grants are handed over *by the releaser*: ``release``
pops the next compatible waiters, records them as holders and sets their events, all
without suspending. So a releasing task that immediately re-acquires finds the resource
taken and queues behind the waiters (no barging), and the hand-off costs one loop wake-up.

Every method runs without suspending except the single ``await event.wait()`` in
``acquire``; that is the only point where cancellation can land, and it is handled there.

Head records (``HeadStore``) live in ``_memory_heads.py``, bounded by their expiry.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import ClassVar

from agentlocks._tasks import TaskSupervisor
from agentlocks._url import Settings
from agentlocks.errors import AgentLocksError, Busy, QueueFull

from ._base import Grant, HolderInfo, LostCallback, SignalCallback, describe
from ._capabilities import HeadSwap
from ._memory_heads import HeadTable
from ._signals import LocalSignals

__all__ = ["MemoryBackend"]

_monotonic = time.monotonic  # bound once: called on every grant
_new_grant = object.__new__


class _Waiter:
    """One queued request. ``woken`` is resolved by the releaser that grants it."""

    __slots__ = ("capacity", "grant", "lease_ttl", "shared", "woken")

    def __init__(
        self, shared: bool, capacity: int | None, lease_ttl: float, woken: asyncio.Future[None]
    ) -> None:
        self.shared = shared
        self.capacity = capacity
        self.lease_ttl = lease_ttl
        # A bare future, not an Event: it is made for every wait, and an anyio.Event costs
        # ten times as much to create (measured in benchmarks/locks.py's hand-off scenario).
        self.woken = woken
        self.grant: Grant[None] | None = None


class _Entry:
    """Holders and FIFO queue of one resource that is shared or contended."""

    __slots__ = ("exclusive", "holders", "queue")

    def __init__(self, holder: Grant[None]) -> None:
        self.holders: set[Grant[None]] = {holder}
        self.exclusive = not holder.shared  # True while the single holder is exclusive
        self.queue: deque[_Waiter] = deque()

    def compatible(self, shared: bool, capacity: int | None) -> bool:
        """Could a request of this shape be held alongside the current holders?"""
        if not self.holders:
            return True
        if not shared or self.exclusive:
            return False
        return capacity is None or len(self.holders) < capacity


class MemoryBackend:
    """In-process backend: FIFO, direct hand-off, fencing tokens; nothing leaves the process.

    State: ``_entries[resource]`` is absent when the resource is idle, the holder's
    ``Grant`` itself while exactly one holder and no waiter exist (the uncontended case,
    which then allocates nothing else), and an ``_Entry`` once a second holder or a waiter
    arrives. Tokens come from one counter per backend instance, so they grow across every
    key and stay monotonic per key even though idle keys keep no state.
    """

    leases_expire: ClassVar[bool] = False  # grants end only by release (or aclose)
    shared_state: ClassVar[bool] = False  # each coordinator's instance has its own state
    release_finishes: ClassVar[bool] = True  # release never suspends
    option_names: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Settings, on_lost: LostCallback, tasks: TaskSupervisor) -> None:
        self._settings = settings
        self._entries: dict[str, Grant[None] | _Entry] = {}
        # This backend's queued requests, so aclose() can fail them (slow path only).
        self._waiting: dict[_Waiter, str] = {}
        self._generations: dict[str, int] = {}
        self._heads = HeadTable()
        self._tokens = itertools.count(1)
        self._signals = LocalSignals()

    def __repr__(self) -> str:
        return f"MemoryBackend(namespace={self._settings.namespace!r}, keys={len(self._entries)})"

    def __len__(self) -> int:
        """Number of resources with a holder or a waiter (0 when everything is free)."""
        return len(self._entries)

    def try_acquire(
        self, resource: str, shared: bool, capacity: int | None, lease_ttl: float
    ) -> Grant[None] | None:
        """Grant at once if the resource is free for this request, without suspending.

        The optional fast path of in-process backends: the coordinator calls it first, so
        an uncontended acquire creates no coroutine and does not yield to the event loop
        (as ``asyncio.Lock`` does not).
        """
        entry = self._entries.get(resource)
        if entry is None:
            # Grant.__init__ inlined (the uncontended case): the constructor call was ~7% of
            # an uncontended acquire+release (callgrind). Keep in step with Grant.__init__.
            grant: Grant[None] = _new_grant(Grant)
            grant.resource = resource
            grant.token = next(self._tokens)
            grant.shared = shared
            grant.lease_ttl = lease_ttl
            grant.acquired_at = _monotonic()
            grant.handle = None
            self._entries[resource] = grant
            return grant
        if isinstance(entry, Grant):
            if not (shared and entry.shared and (capacity is None or capacity > 1)):
                return None
            entry = self._entries[resource] = _Entry(entry)
        elif entry.queue or not entry.compatible(shared, capacity):
            return None
        return self._grant(entry, resource, shared, lease_ttl)

    async def acquire(
        self,
        resource: str,
        *,
        shared: bool,
        capacity: int | None,
        wait: bool,
        max_waiting: int | None,
        lease_ttl: float,
    ) -> Grant[None]:
        grant = self.try_acquire(resource, shared, capacity, lease_ttl)
        if grant is not None:
            return grant
        entry = self._entries[resource]
        if not wait:
            raise Busy(f"{describe(resource)!r} is held", key=describe(resource))
        waiting = 0 if isinstance(entry, Grant) else len(entry.queue)
        if max_waiting is not None and waiting >= max_waiting:
            raise QueueFull(
                f"{waiting} requests already wait on {describe(resource)!r} "
                f"(max_waiting={max_waiting})",
                key=describe(resource),
            )
        if isinstance(entry, Grant):  # first waiter: the sole holder gets a full entry
            entry = self._entries[resource] = _Entry(entry)
        waiter = _Waiter(shared, capacity, lease_ttl, asyncio.get_running_loop().create_future())
        entry.queue.append(waiter)
        self._waiting[waiter] = resource
        try:
            await waiter.woken
        except BaseException:
            # Cancelled (or timed out) while queued. Invariant: on exit nothing of this
            # request remains. Three cases:
            # - the releaser granted it to us before the cancellation landed (the grant
            #   raced the cancel): hand it on exactly as a release would;
            # - we are still queued: leave, which may unblock requests behind us (a
            #   cancelled exclusive waiter at the head was holding back shared ones);
            # - a releaser already popped us and skipped us because our future was
            #   cancelled (see _hand_off): nothing of ours is left to undo.
            if waiter.grant is not None:
                self.release_nowait(waiter.grant)
            elif waiter in entry.queue:
                entry.queue.remove(waiter)
                self._hand_off(resource, entry)
            raise
        finally:
            self._waiting.pop(waiter, None)
        assert waiter.grant is not None  # set by _hand_off before resolving the future
        return waiter.grant

    def _grant(self, entry: _Entry, resource: str, shared: bool, lease_ttl: float) -> Grant[None]:
        grant = Grant(resource, next(self._tokens), shared, lease_ttl, _monotonic())
        entry.holders.add(grant)
        entry.exclusive = not shared
        return grant

    def _hand_off(self, resource: str, entry: _Entry) -> None:
        """Grant the head of the queue while it is compatible; drop the entry if idle."""
        queue = entry.queue
        while queue and entry.compatible(queue[0].shared, queue[0].capacity):
            waiter = queue.popleft()
            if waiter.woken.done():
                # Its task was cancelled (cancelling a task cancels the future it awaits)
                # but has not run its cleanup yet: it is gone, so skip it rather than
                # grant to nobody. Its cleanup finds itself no longer queued.
                continue
            waiter.grant = self._grant(entry, resource, waiter.shared, waiter.lease_ttl)
            waiter.woken.set_result(None)
        if not entry.holders and not queue:
            del self._entries[resource]

    def release_nowait(self, grant: Grant[None]) -> None:
        """Synchronous ``release``: the optional fast path of in-process backends."""
        resource = grant.resource
        entry = self._entries.get(resource)
        if entry is grant:  # sole holder, nobody waiting
            del self._entries[resource]
            return
        if entry is None or isinstance(entry, Grant) or grant not in entry.holders:
            return  # already released: release is idempotent
        entry.holders.discard(grant)
        if not entry.holders:
            entry.exclusive = False
        self._hand_off(resource, entry)

    async def release(self, grant: Grant[None]) -> bool:
        # Never suspends (``release_finishes = True`` promises it): the coordinator relies on
        # this to release without a shield.
        held = self._held(grant)
        self.release_nowait(grant)
        return held

    async def renew(self, grants: Sequence[Grant[None]]) -> Sequence[Grant[None]]:
        return [g for g in grants if not self._held(g)]

    async def verify(self, grant: Grant[None]) -> bool:
        return self._held(grant)

    def _held(self, grant: Grant[None]) -> bool:
        entry = self._entries.get(grant.resource)
        return entry is grant or (isinstance(entry, _Entry) and grant in entry.holders)

    async def inspect(self, resource: str) -> tuple[tuple[HolderInfo, ...], int]:
        entry = self._entries.get(resource)
        if entry is None:
            return (), 0
        holders, waiting = (
            ((entry,), 0) if isinstance(entry, Grant) else (entry.holders, len(entry.queue))
        )
        now = time.monotonic()
        info = tuple(
            HolderInfo(token=g.token, shared=g.shared, age=now - g.acquired_at)
            for g in sorted(holders, key=lambda g: g.token)
        )
        return info, waiting

    async def keys(self, prefix: str) -> list[str]:
        # Every entry has a holder or a waiter: idle ones are deleted (guarantee 9).
        return sorted(r for r in self._entries if r[2:].startswith(prefix))

    async def read_generation(self, name: str) -> int:
        return self._generations.get(name, 0)

    async def publish_generation(self, name: str, generation: int, grant: Grant[None]) -> bool:
        # Fenced: no await between the check and the write, so it is one atomic step.
        if not self._held(grant):
            return False
        self._generations[name] = max(self._generations.get(name, 0), generation)
        return True

    async def swap_head(
        self, resource: str, field: str, expected: str | None, new: str, token: int | None,
        ttl: float,
    ) -> HeadSwap:  # fmt: skip
        return self._heads.swap(resource, field, expected, new, token, ttl)

    def swap_head_nowait(
        self, resource: str, field: str, expected: str | None, new: str, token: int | None,
        ttl: float,
    ) -> HeadSwap:  # fmt: skip
        """``swap_head`` without suspending (for a synchronous checkpoint ``put``)."""
        return self._heads.swap(resource, field, expected, new, token, ttl)

    async def drop_heads(self, resource: str) -> None:
        self._heads.drop(resource)

    def drop_heads_nowait(self, resource: str) -> None:
        """``drop_heads`` without suspending."""
        self._heads.drop(resource)

    async def signal(self, resource: str, kind: str, *, ttl: float, mark: int | None = None) -> int:
        # A fresh mark is a token drawn from the same counter as grants: greater than
        # every token issued so far, smaller than every later one (see Backend.signal).
        return self._signals.send(resource, kind, ttl, next(self._tokens) if mark is None else mark)

    def watch_signals(
        self, resource: str, deliver: SignalCallback
    ) -> AbstractAsyncContextManager[None]:
        return self._signals.watch(resource, deliver)

    async def clear_signal(self, resource: str, kind: str, mark: int) -> None:
        self._signals.clear(resource, kind, mark)

    async def aclose(self) -> None:
        # Waiting requests fail at once (nobody would ever hand them a grant); they leave
        # their queues here, so requests of other coordinators sharing this state (the
        # test backend ``lossy://`` does) are handed on as if they had been cancelled.
        # Holders keep their grants: clearing them would break exclusion for blocks still
        # running, and the coordinator reports those leases as lost.
        closed = AgentLocksError("the coordinator was closed while this request waited")
        for waiter, resource in list(self._waiting.items()):
            entry = self._entries.get(resource)
            if isinstance(entry, _Entry) and waiter in entry.queue:
                entry.queue.remove(waiter)
                if not waiter.woken.done():
                    waiter.woken.set_exception(closed)
                self._hand_off(resource, entry)
