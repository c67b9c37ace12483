"""The ``Lease``: one request for a lock or slot, then proof of its grant (guarantee 8).

``coord.acquire()`` returns a pending Lease; awaiting it (or entering it with ``async with``)
acquires it. One object plays both parts so the hot path allocates as little as possible.

Ownership lives in this object, never in a thread- or task-local, so a lease may be passed
to another task (a streaming response that outlives its handler) and released there.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from ._options import Request
from .backends._base import Grant
from .errors import LeaseLost

if TYPE_CHECKING:
    from .coordinator import Coordinator


class Lease:
    """A lock or semaphore slot: requested, then held, then released.

    ``coord.acquire(...)`` and ``coord.semaphore(...)`` return a *pending* lease. Acquire it
    by awaiting it (``lease = await coord.acquire(key)``; release it yourself) or with
    ``async with coord.acquire(key) as lease:`` (released when the block exits; where leases
    expire, as on Redis and PostgreSQL, with ``on_lost="cancel"`` the block is cancelled if
    the lease is lost, and the exit raises ``LeaseLost``). A lease is acquired at most once.

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

    __slots__ = ("_coordinator", "_grant", "_lost", "_released", "_request", "_resource", "_scope")

    def __init__(self, coordinator: Coordinator, resource: str, request: Request) -> None:
        self._coordinator = coordinator
        # The resource (``"l:" + key`` or ``"s:" + name``) and the request's options, which
        # are shared by every lease made with the same options: a lease is built on every
        # acquire, and building no request object for it is the cheapest way to carry them.
        self._resource = resource
        self._request = request
        self._grant: Grant | None = None
        self._lost = False
        self._released = False
        # Set while an ``async with`` body runs under this lease and on_lost="cancel": the
        # scope a lost lease cancels.
        self._scope: anyio.CancelScope | None = None

    # -- state -----------------------------------------------------------------------------

    @property
    def key(self) -> str:
        """The lock key or semaphore name this lease is for."""
        return self._resource[2:]  # (``describe`` of backends/_base.py, inlined)

    @property
    def shared(self) -> bool:
        """False for an exclusive lock; True for a shared lock or a semaphore slot."""
        return self._request.shared

    @property
    def token(self) -> int:
        """The fencing token of this grant.

        Raises:
            RuntimeError: The lease has not been acquired yet.
        """
        return self._held_grant().token

    @property
    def lost(self) -> bool:
        """True once the lease is known to have ended while held (expired, dropped, closed)."""
        if self._lost:
            return True
        # In-process leases are never marked one by one (that would cost the hot path):
        # a lease still held when its coordinator closed is lost from then on.
        return self._grant is not None and not self._released and self._coordinator._closed

    @property
    def released(self) -> bool:
        """True once ``release()`` was called."""
        return self._released

    def _held_grant(self) -> Grant:
        if self._grant is None:
            raise RuntimeError(f"{self!r} has not been acquired: await it or use `async with`")
        return self._grant

    def __repr__(self) -> str:
        if self._grant is None:
            return f"Lease(key={self.key!r}, shared={self.shared}, state=pending)"
        state = "released" if self._released else "lost" if self._lost else "held"
        return (
            f"Lease(key={self.key!r}, token={self._grant.token}, shared={self.shared}, "
            f"state={state})"
        )

    # -- acquiring -------------------------------------------------------------------------

    def _check_fresh(self) -> None:
        if self._grant is not None or self._released:
            raise RuntimeError(f"{self!r} was already acquired; a lease is acquired once")

    def _try_now(self) -> bool:
        """In-process fast path: take the grant without suspending if it is free now."""
        self._check_fresh()
        try_acquire = self._coordinator._try_acquire
        if try_acquire is None:
            return False
        request = self._request
        grant = try_acquire(self._resource, request.shared, request.capacity, request.lease_ttl)
        if grant is None:
            return False
        self._grant = grant
        return True

    def __await__(self) -> Generator[Any, None, Lease]:
        # The in-process paths, inlined: this is the hottest code of the library.
        coord = self._coordinator
        try_acquire = coord._try_acquire
        if try_acquire is not None and self._grant is None and not self._released:
            request = self._request
            resource = self._resource
            grant = try_acquire(resource, request.shared, request.capacity, request.lease_ttl)
            if (
                grant is None
                and request.timeout is None
                and request.wait
                and request.max_waiting is None
            ):
                # Nothing for the coordinator to enforce (no deadline, no fail-fast
                # option, in-process), so wait in the backend directly: one coroutine
                # frame less between a release and this waiter running.
                grant = yield from coord._backend.acquire(
                    resource, shared=request.shared, capacity=request.capacity, wait=True,
                    max_waiting=None, lease_ttl=request.lease_ttl,
                ).__await__()  # fmt: skip
            if grant is not None:
                self._grant = grant
                return self
            # Not free, and a deadline or a fail-fast option to enforce: the slow path.
        else:
            self._check_fresh()
        yield from coord._acquire(self).__await__()
        return self

    async def __aenter__(self) -> Lease:
        if not self._try_now():
            await self._coordinator._acquire(self)
        if self._coordinator._renewer is not None and self._request.on_lost == "cancel":
            # The body runs inside this scope; _mark_lost cancels it. Entered here and exited
            # in __aexit__, in the same task, so the scopes nest correctly.
            scope = anyio.CancelScope()
            scope.__enter__()
            self._scope = scope
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope, self._scope = self._scope, None
        if scope is not None and scope.__exit__(exc_type, exc, tb):
            # The scope swallowed its own cancellation: the body was cancelled because the
            # lease was lost. The body's exception is that cancellation, not the user's.
            exc = None
        try:
            await self.release()
        except LeaseLost as lost:
            if exc is not None and not isinstance(exc, LeaseLost):
                raise lost from exc
            raise

    # -- holding ---------------------------------------------------------------------------

    async def release(self) -> None:
        """End the lease and hand the key to the next waiter.

        Idempotent and shielded from cancellation; only ever releases this grant.

        Raises:
            LeaseLost: The lease had been lost: whatever it protected ran unprotected.
            BackendError: The server could not be told; the grant then expires by itself.
        """
        release_nowait = self._coordinator._release_nowait
        if release_nowait is not None and not self._released and self._grant is not None:
            # In-process fast path: never suspends, and such leases are never lost.
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

    def _lost_at_release(self) -> None:
        """Record a loss that the release itself found (``_mark_lost`` ignores released
        leases, so that a late renewal cannot turn a clean release into a loss)."""
        if not self._lost:
            self._lost = True
            self._coordinator._telemetry.lost(self._resource)

    def _mark_lost(self) -> None:
        """Record a loss found while held and, if the block asked for it, cancel that block.

        A released lease is left alone: losses a release finds are ``_lost_at_release``.
        """
        if self._lost or self._released:
            return
        self._lost = True
        self._coordinator._telemetry.lost(self._resource)
        if self._scope is not None and self._request.on_lost == "cancel":
            self._scope.cancel()
