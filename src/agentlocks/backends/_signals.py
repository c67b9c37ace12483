"""Signals to lock holders, in process: the ``memory://`` side of ``Backend.signal``.

One :class:`LocalSignals` per backend (shared by every instance of a test backend that
shares its state). Records are ``(resource, kind) -> (mark, deadline)``; a resource's
watches are callbacks called directly by the sender, on the event loop, without
suspending: delivery is a function call, so nothing can be missed and no task is needed.
Expired records are dropped whenever a signal is sent or a record read (the dict stays as
small as the set of signals sent in the last ``ttl`` seconds).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from ._base import SignalCallback, deliver_safely

__all__ = ["LocalSignals"]


class LocalSignals:
    """Signal records and watches of one in-process backend."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], tuple[int, float]] = {}
        self._watches: dict[str, list[SignalCallback]] = {}

    def __len__(self) -> int:
        """Records and watched resources still present (0 once everything is over)."""
        self._purge(time.monotonic())
        return len(self._records) + len(self._watches)

    def send(self, resource: str, kind: str, ttl: float, mark: int) -> int:
        """Record ``kind`` (highest mark wins) and deliver it to the resource's watches."""
        now = time.monotonic()
        self._purge(now)
        old = self._records.get((resource, kind))
        kept = mark if old is None else max(mark, old[0])
        self._records[(resource, kind)] = (kept, now + ttl)
        # A copy: a callback may end its own watch (or start another) while we iterate.
        for deliver in list(self._watches.get(resource, ())):
            deliver_safely(deliver, kind, mark)
        return mark

    def clear(self, resource: str, kind: str, mark: int) -> None:
        """Drop the record of ``kind`` if its mark is still ``mark``."""
        record = self._records.get((resource, kind))
        if record is not None and record[0] == mark:
            del self._records[(resource, kind)]

    def watch(self, resource: str, deliver: SignalCallback) -> AbstractAsyncContextManager[None]:
        """``Backend.watch_signals``: registered first, then the current records delivered."""
        return self._watch(resource, deliver)

    @asynccontextmanager
    async def _watch(self, resource: str, deliver: SignalCallback) -> AsyncIterator[None]:
        self._watches.setdefault(resource, []).append(deliver)
        try:
            now = time.monotonic()
            self._purge(now)
            for (res, kind), (mark, _) in list(self._records.items()):
                if res == resource:
                    deliver_safely(deliver, kind, mark)
            yield
        finally:
            watches = self._watches[resource]
            watches.remove(deliver)
            if not watches:
                del self._watches[resource]

    def _purge(self, now: float) -> None:
        for key in [k for k, (_, deadline) in self._records.items() if deadline <= now]:
            del self._records[key]
