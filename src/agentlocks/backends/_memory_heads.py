"""Head records of ``memory://`` (the ``HeadStore`` methods of ``_base.py``), in-process.

Bounded state (guarantee 9): every record carries its expiry, and the table keeps its
records in the order they were last swapped (a dict, re-inserted on every swap), so each
swap first drops the expired records at the front of that order; a record nobody swaps
again is gone at the latest at the first swap after its expiry, and the table never holds
more than the records swapped within one ``ttl``. A record read after its expiry counts as
absent, whatever the sweep has reached.

The table is guarded by a ``threading.Lock``: a synchronous ``put`` on a worker thread may
swap while the event loop swaps too, and compare-and-update must stay one atomic step.
Nothing ever waits while holding it.
"""

from __future__ import annotations

import threading
import time
from typing import Final

from ._base import HeadSwap

__all__ = ["HeadTable"]

_clock: Final = time.monotonic


class _Record:
    __slots__ = ("expires", "head", "swapped", "token")

    def __init__(self, head: str, token: int | None, swapped: float, expires: float) -> None:
        self.head = head
        self.token = token
        self.swapped = swapped
        self.expires = expires


class HeadTable:
    """Head records of one memory backend: ``(resource, field) -> head, token, expiry``."""

    def __init__(self) -> None:
        # Insertion order is swap order: the sweep's queue (see the module docstring).
        self._records: dict[tuple[str, str], _Record] = {}
        self._fields: dict[str, set[str]] = {}  # resource -> its fields, for drop()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    def swap(
        self, resource: str, field: str, expected: str | None, new: str, token: int | None,
        ttl: float,
    ) -> HeadSwap:  # fmt: skip
        """``HeadStore.swap_head``, without suspending."""
        with self._lock:
            now = _clock()
            self._sweep(now)
            key = (resource, field)
            record = self._records.get(key)
            if record is not None and record.expires <= now:
                record = None
            if record is None:
                head, stored, age = "", None, None
            else:
                head, stored, age = record.head, record.token, now - record.swapped
            if token is not None and stored is not None and stored > token:
                return HeadSwap("fenced", head, stored, age)
            if expected is not None and head and head != expected:
                return HeadSwap("conflict", head, stored, age)
            kept = token if stored is None else stored if token is None else max(stored, token)
            self._records.pop(key, None)  # re-inserted at the end: the sweep order
            self._records[key] = _Record(new, kept, now, now + ttl)
            self._fields.setdefault(resource, set()).add(field)
            return HeadSwap("swapped", head, stored, age)

    def drop(self, resource: str) -> None:
        """``HeadStore.drop_heads``, without suspending."""
        with self._lock:
            for field in self._fields.pop(resource, ()):
                self._records.pop((resource, field), None)

    def _sweep(self, now: float) -> None:
        records = self._records
        while records:
            key, record = next(iter(records.items()))
            if record.expires > now:
                return
            del records[key]
            fields = self._fields.get(key[0])
            if fields is not None:
                fields.discard(key[1])
                if not fields:
                    del self._fields[key[0]]
