"""Head records of ``memory://`` (the ``HeadStore`` methods of ``_capabilities.py``), in-process.

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

from ._capabilities import HeadSwap

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
        done = self.try_swap(resource, field, expected, new, token, ttl)
        if isinstance(done, HeadSwap):
            return done
        head, stored, age = done
        return HeadSwap("swapped", head, stored, age)

    def try_swap(
        self, resource: str, field: str, expected: str | None, new: str, token: int | None,
        ttl: float,
    ) -> HeadSwap | tuple[str, int | None, float | None]:  # fmt: skip
        """``swap`` for the hot path: a refusal as a ``HeadSwap``, a success as a tuple.

        The tuple is what the ``"swapped"`` ``HeadSwap`` would hold (head, token, age
        before the swap): a plain tuple is cheaper to build than the frozen dataclass, and
        an in-process checkpoint put does this once per superstep.
        """
        records = self._records
        key = (resource, field)
        with self._lock:
            now = _clock()
            if records:
                first = next(iter(records.values()))
                if first.expires <= now:
                    self._sweep(now)
            record = records.get(key)
            if record is None or record.expires <= now:
                head, stored, age = "", None, None
            else:
                head, stored, age = record.head, record.token, now - record.swapped
            if token is not None and stored is not None and stored > token:
                return HeadSwap("fenced", head, stored, age)
            if expected is not None and head and head != expected:
                return HeadSwap("conflict", head, stored, age)
            kept = token if stored is None else stored if token is None else max(stored, token)
            if record is None:
                record = _Record(new, kept, now, now + ttl)
                fields = self._fields.get(resource)
                if fields is None:
                    self._fields[resource] = {field}
                else:
                    fields.add(field)
            else:
                # The same object, updated: only its place in the sweep order changes.
                del records[key]
                record.head, record.token, record.swapped = new, kept, now
                record.expires = now + ttl
            records[key] = record  # at the end: the sweep order
            return head, stored, age

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
