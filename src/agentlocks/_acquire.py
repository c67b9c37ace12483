"""``AcquireContext``: what ``coord.acquire()`` returns, both awaitable and ``async with``.

Awaiting it returns a :class:`Lease` the caller releases. ``async with`` releases on exit,
and on remote backends with ``on_lost="cancel"`` runs the body inside a cancel scope that a
lost lease cancels; the exit then raises ``LeaseLost``.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from ._lease import Lease, OnLost
from .errors import LeaseLost

if TYPE_CHECKING:
    from .coordinator import Coordinator

Request = tuple[str, str, bool, "int | None", "float | None", bool, "int | None", float, OnLost]
"""(resource, key, shared, capacity, timeout, wait, max_waiting, lease_ttl, on_lost)"""


class AcquireContext:
    """A pending request for a lock or semaphore slot.

    ``await`` it to get a :class:`Lease` (release it yourself), or use ``async with`` to
    hold it for a block. One context may be entered again after it has exited.
    """

    __slots__ = ("_coordinator", "_lease", "_request")

    def __init__(self, coordinator: Coordinator, request: Request) -> None:
        self._coordinator = coordinator
        # One tuple rather than nine attributes: this object is built on every acquire.
        self._request = request
        self._lease: Lease | None = None

    def __repr__(self) -> str:
        resource, key, shared = self._request[:3]
        kind = {"l": "lock", "s": "semaphore", "r": "registry"}[resource[0]]
        return f"AcquireContext({kind}={key!r}, shared={shared})"

    def _acquire(self) -> Coroutine[Any, Any, Lease]:
        return self._coordinator._acquire(*self._request)

    def _acquire_now(self) -> Lease | None:
        """The in-process fast path: a lease if granted without waiting, else None."""
        coord = self._coordinator
        try_acquire = coord._try_acquire
        if try_acquire is None or coord._closed:
            return None
        resource, key, shared, capacity, _, _, _, lease_ttl, on_lost = self._request
        grant = try_acquire(resource, shared, capacity, lease_ttl)
        return None if grant is None else Lease(coord, grant, key, on_lost)

    def __await__(self) -> Generator[Any, None, Lease]:
        lease = self._acquire_now()
        if lease is None:
            lease = yield from self._acquire().__await__()
        return lease

    async def __aenter__(self) -> Lease:
        if self._lease is not None:
            raise RuntimeError(f"{self!r} is already entered; it cannot be entered twice at once")
        lease = self._acquire_now() or await self._acquire()
        self._lease = lease
        if self._coordinator._renewer is not None and self._request[8] == "cancel":
            # The body runs inside this scope; Lease._mark_lost cancels it. Entered here and
            # exited in __aexit__, in the same task, so the scopes nest correctly.
            scope = anyio.CancelScope()
            scope.__enter__()
            lease._scope = scope
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = self._lease
        assert lease is not None, "__aexit__ without __aenter__"
        self._lease = None
        scope, lease._scope = lease._scope, None
        if scope is not None and scope.__exit__(exc_type, exc, tb):
            # The scope swallowed its own cancellation: the body was cancelled because the
            # lease was lost. The body's exception is that cancellation, not the user's.
            exc = None
        try:
            await lease.release()
        except LeaseLost as lost:
            if exc is not None and not isinstance(exc, LeaseLost):
                raise lost from exc
            raise
