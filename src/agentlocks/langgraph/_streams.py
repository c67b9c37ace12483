"""``stream_with``'s response body: a stream that owns a lease taken before it started.

An async generator cannot own such a lease: one never started does not run its ``finally``
on ``aclose()``, and one dropped unstarted is never finalised at all (a client that
disconnects before the first chunk). So the lease belongs to this object, which has its
own ``aclose()`` and a ``weakref.finalize`` backstop; the generator takes over the lease
only once it runs, and from then on releases it itself (after LangGraph's exit task, on
cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from ._run import Held, release_after

__all__ = ["LeasedStream", "ndjson"]


def ndjson(chunk: Any) -> str | bytes:
    """One JSON line per chunk (LangChain messages via ``model_dump``); str/bytes as is."""
    if isinstance(chunk, str | bytes):
        return chunk
    return json.dumps(chunk, default=_jsonable, ensure_ascii=False) + "\n"


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return repr(value)


def _backstop(held: Held, loop: asyncio.AbstractEventLoop) -> None:
    """Finaliser of a stream dropped before it ever ran: give its lease back."""
    if loop.is_closed():
        return  # the loop is gone; a remote lease expires by itself within lease_ttl
    with contextlib.suppress(RuntimeError):  # closed between the check and the call
        loop.call_soon_threadsafe(release_after, held)


class LeasedStream:
    """An async iterator of encoded chunks that frees its lease however it ends.

    Ends that free the lease: exhaustion, an error, cancellation (the generator defers the
    release until LangGraph's exit task has flushed), :meth:`aclose` (also before the first
    chunk), or garbage collection without either (finaliser).
    """

    __slots__ = ("__weakref__", "_agen", "_done", "_encode", "_factory", "_finalizer", "_held")

    def __init__(
        self,
        held: Held,
        factory: Callable[[], AsyncIterator[Any]],
        encode: Callable[[Any], str | bytes],
    ) -> None:
        self._held = held
        self._factory = factory
        self._encode = encode
        self._agen: AsyncIterator[Any] | None = None
        self._done = False
        self._finalizer = weakref.finalize(self, _backstop, held, asyncio.get_running_loop())

    def __repr__(self) -> str:
        state = "done" if self._done else "running" if self._agen is not None else "pending"
        return f"<LeasedStream {self._held.lease!r} {state}>"

    def __aiter__(self) -> LeasedStream:
        return self

    async def __anext__(self) -> str | bytes:
        if self._done:
            raise StopAsyncIteration
        if self._agen is None:
            self._agen = self._factory()
            # From here on the generator owns the lease: it is started by the __anext__
            # below before any suspension, and its finally releases the lease.
            self._finalizer.detach()
        try:
            chunk = await self._agen.__anext__()
        except BaseException:
            self._done = True
            raise
        return self._encode(chunk)

    async def aclose(self) -> None:
        """Stop the run (if it started) and free the lease. Idempotent."""
        if self._done and self._agen is None:
            return
        self._done = True
        agen, self._agen = self._agen, None
        if agen is None:
            self._finalizer.detach()
            await self._held.release()
            return
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            await aclose()
