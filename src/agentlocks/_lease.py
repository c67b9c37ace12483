"""The ``Lease``: proof of one grant, and the only thing that can end it (guarantee 8).

Ownership lives in this object, never in a thread- or task-local, so a lease may be passed
to another task (a streaming response that outlives its handler) and released there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import anyio

from .backends._base import Grant

if TYPE_CHECKING:
    from .coordinator import Coordinator

OnLost = Literal["cancel", "ignore"]


class Lease:
    """A held lock or semaphore slot.

    Get one from ``coord.acquire(...)`` or ``coord.semaphore(...)``, either as the target of
    ``async with`` or by awaiting the call. Attributes are read-only.

    Attributes:
        key: The lock key or semaphore name.
        token: Fencing token: greater than every token granted before on this key.
        shared: False for an exclusive lock; True for a shared lock or a semaphore slot.

    Example:
        >>> import agentlocks, anyio
        >>> async def main() -> None:
        ...     async with agentlocks.connect() as coord:
        ...         lease = await coord.acquire("thread:42")
        ...         try:
        ...             print(lease.key, lease.token, lease.lost)
        ...         finally:
        ...             await lease.release()
        >>> anyio.run(main)
        thread:42 1 False
    """

    __slots__ = ("_coordinator", "_grant", "_key", "_lost", "_on_lost", "_released", "_scope")

    def __init__(self, coordinator: Coordinator, grant: Grant, key: str, on_lost: OnLost) -> None:
        self._coordinator = coordinator
        self._grant = grant
        self._key = key
        self._on_lost: OnLost = on_lost
        self._lost = False
        self._released = False
        # Set while an ``async with`` body runs under this lease and on_lost="cancel": the
        # scope a lost lease cancels.
        self._scope: anyio.CancelScope | None = None

    @property
    def key(self) -> str:
        """The lock key or semaphore name this lease holds."""
        return self._key

    @property
    def token(self) -> int:
        """The fencing token of this grant."""
        return self._grant.token

    @property
    def shared(self) -> bool:
        """False for an exclusive lock; True for a shared lock or a semaphore slot."""
        return self._grant.shared

    @property
    def lost(self) -> bool:
        """True once the lease is known to have ended while held (expired, dropped)."""
        return self._lost

    @property
    def released(self) -> bool:
        """True once ``release()`` was called."""
        return self._released

    async def release(self) -> None:
        """End the lease and hand the key to the next waiter.

        Idempotent and shielded from cancellation; only ever releases this grant.

        Raises:
            LeaseLost: The lease had been lost: whatever it protected ran unprotected.
            BackendError: The server could not be told; the grant then expires by itself.
        """
        release_nowait = self._coordinator._release_nowait
        if release_nowait is not None and not self._released:
            # In-process fast path: never suspends and such leases are never lost.
            self._released = True
            release_nowait(self._grant)
            return
        await self._coordinator._release(self)

    async def verify(self) -> None:
        """Check with the backend, in one round trip, that the grant is still held.

        Raises:
            LeaseLost: The grant is gone (or the lease was released).
        """
        await self._coordinator._verify(self)

    def _mark_lost(self) -> None:
        """Record the loss and, if the holder's block asked for it, cancel that block."""
        if self._lost or self._released:
            return
        self._lost = True
        if self._scope is not None and self._on_lost == "cancel":
            self._scope.cancel()

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self._lost else "held"
        return f"Lease(key={self._key!r}, token={self.token}, shared={self.shared}, state={state})"
