"""Signals to lock holders on Redis: ``Backend.signal`` / ``watch_signals`` / ``clear_signal``.

Records. A lock's signals are one hash beside the lock's own keys (same hash tag),
``agentlocks:{<tag>}:s``, ``kind -> highest mark``, with a TTL (the longest ``ttl`` asked
for). ``lua/signals.lua`` draws a fresh mark from the lock's token counter, updates the
record and publishes, in one script: one round trip per signal.

Push. Every signal of a namespace is published on one channel,
``agentlocks:signals:<hash of the namespace>``, as ``"<kind>:<tag> <mark>"``. Each backend
that watches anything keeps one pub/sub connection subscribed to it (the same reader as
the lock inbox, ``_waiting.Inbox``: reconnects with back-off), and hands each message
to the watches of that tag. So a watch costs no subscribe round trip and no connection of
its own; the price is that every watching process of the namespace sees every signal and
drops those for locks it does not watch (signals are rare: one per interrupted run).

Missed messages. Pub/sub is fire-and-forget, so the record is what counts: a watch reads
it when it starts, after the subscription is live (a signal sent before the watch started
is found there; one sent after the read is pushed), and every watch reads it again
whenever the subscription is restored. Deliveries may repeat; watches are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

from agentlocks._tasks import TaskSupervisor
from agentlocks.backends._base import SignalCallback, deliver_safely
from agentlocks.errors import BackendError

from ._link import Link
from ._scripts import _load, lock_keys
from ._waiting import Inbox

__all__ = ["SIGNALS", "RedisSignals", "signal_keys"]

logger = logging.getLogger("agentlocks")

SIGNALS: Final = _load("signals")
_KIND = re.compile(r"[a-z][a-z0-9_-]*")


def signal_keys(namespace: str, resource: str) -> tuple[bytes, ...]:
    """The lock's four keys and its signal record (``signals.lua``'s KEYS), all one slot."""
    keys = lock_keys(namespace, resource)
    return (*keys, keys[0][:-1] + b"s")


def _tag(keys: tuple[bytes, ...]) -> str:
    """The lock's hash tag, as it appears in the published messages."""
    key = keys[0].decode()
    return key[key.index("{") + 1 : key.index("}")]


class _Watched:
    """One watched resource of this process: its keys and its watches' callbacks."""

    __slots__ = ("callbacks", "keys")

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self.keys = keys
        self.callbacks: list[SignalCallback] = []

    def deliver(self, reply: Any) -> None:
        """Deliver a ``read`` reply (``[kind, mark, ...]``) to every callback."""
        pairs = [(_text(k), int(_text(m))) for k, m in zip(reply[::2], reply[1::2], strict=True)]
        for deliver in list(self.callbacks):
            for kind, mark in pairs:
                deliver_safely(deliver, kind, mark)


class RedisSignals:
    """The signals of one Redis backend (see the module docstring)."""

    def __init__(self, link: Link, namespace: str, tasks: TaskSupervisor) -> None:
        self._link = link
        self._tasks = tasks
        self._namespace = namespace
        digest = hashlib.blake2b(namespace.encode(), digest_size=8).hexdigest()
        self._channel = f"agentlocks:signals:{digest}"
        self._watched: dict[str, _Watched] = {}  # tag -> the watches of that lock
        self._inbox = Inbox(self._open, self._pushed, self._resubscribed, self._wanted, tasks)
        self._reread_task: asyncio.Task[None] | None = None

    async def send(self, resource: str, kind: str, ttl: float, mark: int | None) -> int:
        """``Backend.signal``: one script call."""
        if not _KIND.fullmatch(kind):
            raise ValueError(f"a signal kind is lowercase letters, digits, - and _; got {kind!r}")
        keys = signal_keys(self._namespace, resource)
        reply = await self._link.run(
            SIGNALS, keys, "send", kind, _ms(ttl), "" if mark is None else mark,
            self._channel, _tag(keys),
        )  # fmt: skip
        return int(_text(reply))

    async def clear(self, resource: str, kind: str, mark: int) -> None:
        """``Backend.clear_signal``: one script call."""
        await self._link.run(SIGNALS, signal_keys(self._namespace, resource), "clear", kind, mark)

    def watch(self, resource: str, deliver: SignalCallback) -> AbstractAsyncContextManager[None]:
        """``Backend.watch_signals``."""
        return self._watch(resource, deliver)

    @asynccontextmanager
    async def _watch(self, resource: str, deliver: SignalCallback) -> AsyncIterator[None]:
        keys = signal_keys(self._namespace, resource)
        tag = _tag(keys)
        watched = self._watched.get(tag)
        if watched is None:
            watched = self._watched[tag] = _Watched(keys)
        # Registered before the subscription and the read: a message that arrives while
        # the read is in flight is delivered too (twice at worst), never lost.
        watched.callbacks.append(deliver)
        try:
            await self._inbox.start()  # live before the read, or a signal could fall between
            reply = await self._link.run(SIGNALS, keys, "read")
            for kind, mark in zip(reply[::2], reply[1::2], strict=True):
                deliver_safely(deliver, _text(kind), int(_text(mark)))
            yield
        finally:
            watched.callbacks.remove(deliver)
            if not watched.callbacks and self._watched.get(tag) is watched:
                del self._watched[tag]

    async def aclose(self) -> None:
        """Stop the subscription and any re-read in flight."""
        task, self._reread_task = self._reread_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._inbox.aclose()

    # -- the subscription ------------------------------------------------------------------------

    async def _open(self) -> Any:
        return await self._link.open_inbox(self._channel)

    def _wanted(self) -> bool:
        return bool(self._watched)

    def _pushed(self, name: str, mark: int) -> None:
        kind, _, tag = name.partition(":")
        watched = self._watched.get(tag)
        if watched is not None:
            for deliver in list(watched.callbacks):
                deliver_safely(deliver, kind, mark)

    def _resubscribed(self) -> None:
        # Messages published while the subscription was down are lost: read every watched
        # record again (one pipelined round trip), in a task (we are in the reader's).
        if self._tasks.closed or not self._watched:
            return
        self._reread_task = self._tasks.spawn(self._reread(), name="redis signals re-read")

    async def _reread(self) -> None:
        watched = list(self._watched.values())
        try:
            replies = await self._link.batch(SIGNALS, [(w.keys, ("read",)) for w in watched])
        except BackendError as exc:
            logger.warning("could not re-read signal records after reconnecting: %s", exc)
            return
        for entry, reply in zip(watched, replies, strict=True):
            if not isinstance(reply, BaseException):
                entry.deliver(reply)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))
