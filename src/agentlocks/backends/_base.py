"""The backend contract, written once.

A backend owns *waiting* and *state*: it queues requests, grants them in FIFO order, wakes
the next waiter itself when a grant ends (pushed, never polled), issues fencing tokens, and
keeps per-key state bounded. The :class:`~agentlocks.Coordinator` owns *policy*: argument
validation, timeouts (as cancellation), lease renewal, lost-lease handling and shielding.
A third-party backend implements :class:`Backend` and proves itself with
``agentlocks.testing``.

Resources. The coordinator hands backends a *resource* string, never a raw user key:
``"l:" + key`` for locks (a registry's lock is the lock named like the registry) and
``"s:" + name`` for semaphores. Backends treat it as opaque (it may hold any Unicode) and
scope it by ``settings.namespace``. Registry generations are stored under the registry's
plain name, apart from locks.

Semantics every method must keep (the guarantees of API.md, from the backend's side):

* ``acquire`` returns only once the request is granted. A request is grantable when every
  earlier request for the resource has been granted or has left, and it is compatible with
  the current holders: exclusive needs no holder; shared (``capacity is None``) needs no
  exclusive holder; a semaphore request (``capacity`` set) needs fewer than ``capacity``
  holders. Adjacent grantable requests at the head are granted together.
* ``acquire`` is cancellation-safe at every await: if the calling task is cancelled (the
  coordinator implements ``timeout`` this way), the request leaves the queue, and a grant
  that raced the cancellation is released (handed on to the next waiter) before the
  cancellation propagates. Nothing is left held or queued.
* ``wait=False``: grant at once or raise ``Busy``. ``max_waiting``: if the request would have
  to wait and ``max_waiting`` requests already wait on the resource (cluster-wide), raise
  ``QueueFull``. Both without ever entering the queue.
* Tokens: every grant on a resource gets a token greater than every token granted before on
  it (see API.md guarantee 4 for the scope per backend).
* ``release`` is idempotent, releases only the given grant, and hands the resource on to
  the next waiters as part of the release itself.
* A resource with no holders and no waiters leaves nothing that lasts.
* Driver failures surface as ``BackendError`` with the driver error as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agentlocks._tasks import TaskSupervisor
    from agentlocks._url import Settings

__all__ = ["Backend", "FastPath", "Grant", "HolderInfo", "KeyInfo", "LostCallback"]


class Grant:
    """One granted request, as the backend issued it.

    Identity is the grant: two grants are never equal, even with equal fields. (A plain
    slotted class rather than a dataclass: one is built on every acquire, and the
    hand-written constructor is measurably cheaper.)

    Attributes:
        resource: The resource string the grant is on (``"l:<key>"`` and so on).
        token: The fencing token.
        shared: False for an exclusive lock; True for shared locks and semaphore slots.
        lease_ttl: Seconds the lease lives without renewal (remote backends).
        acquired_at: ``time.monotonic()`` when the grant was made, for ``inspect``.
        handle: Backend-private data (an owner id, a connection, ...).
    """

    __slots__ = ("acquired_at", "handle", "lease_ttl", "resource", "shared", "token")

    def __init__(
        self,
        resource: str,
        token: int,
        shared: bool,
        lease_ttl: float,
        acquired_at: float,
        handle: object = None,
    ) -> None:
        self.resource = resource
        self.token = token
        self.shared = shared
        self.lease_ttl = lease_ttl
        self.acquired_at = acquired_at
        self.handle = handle

    def __repr__(self) -> str:
        return (
            f"Grant(resource={self.resource!r}, token={self.token}, shared={self.shared}, "
            f"lease_ttl={self.lease_ttl})"
        )


@dataclass(frozen=True, slots=True)
class HolderInfo:
    """One current holder of a key, as ``Coordinator.inspect`` reports it."""

    token: int
    shared: bool
    age: float
    """Seconds since the grant (as far as the backend can tell)."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """Snapshot of a key: its holders and how many requests wait."""

    key: str
    holders: tuple[HolderInfo, ...]
    waiting: int

    @property
    def held(self) -> bool:
        """True while at least one holder holds the key."""
        return bool(self.holders)


LostCallback = Callable[[Grant], None]
"""Called by a backend, on the event loop, when it learns on its own that a grant is gone."""


@runtime_checkable
class Backend(Protocol):
    """What a backend implements. Constructed as ``cls(settings, on_lost, tasks)``, no I/O.

    ``tasks`` is the coordinator's :class:`~agentlocks._tasks.TaskSupervisor`: every
    background task of the backend is started with ``tasks.spawn(...)`` (never a bare
    ``create_task``), so failures are logged and ``aclose()`` ends them all. Cleanup steps
    that must survive cancellation (release, withdrawing a cancelled request) run under
    :func:`agentlocks._tasks.finish`.

    Class attributes:
        remote: True when the backend talks to a server. The coordinator then renews leases
            in the background (one task per coordinator, calling ``renew`` in batches),
            tracks grants so a loss can cancel its holder, and shields ``release`` from
            cancellation. An in-process backend (False) promises that ``release`` never
            suspends and that grants are never lost.
        option_names: Backend-specific options accepted in the URL query or as keywords.
        release_finishes: Optional, default False. True promises that ``release`` runs to
            its end on the server even if its caller is cancelled, repeatedly (it waits on
            its own ``finish`` or on futures that refuse ``cancel()``): the coordinator then
            awaits it directly instead of through :func:`~agentlocks._tasks.finish`.
    """

    remote: ClassVar[bool]
    option_names: ClassVar[frozenset[str]]

    def __init__(self, settings: Settings, on_lost: LostCallback, tasks: TaskSupervisor) -> None:
        """Keep the settings; connect lazily (no I/O here). Call ``on_lost`` on losses."""
        ...

    async def acquire(
        self,
        resource: str,
        *,
        shared: bool,
        capacity: int | None,
        wait: bool,
        max_waiting: int | None,
        lease_ttl: float,
        timeout: float | None,
    ) -> Grant:
        """Wait in FIFO order until the request is granted; return the grant.

        ``timeout`` is informational (the coordinator enforces it by cancellation); a remote
        backend uses it to give the queued request a server-side deadline so a dead waiter
        cannot stall the queue.
        """
        ...

    async def release(self, grant: Grant) -> bool:
        """End ``grant`` (idempotent) and hand the resource to the next waiters.

        Returns True if the server still had the grant, False if it was already gone
        (expired, or given to another client): the coordinator then reports the lease as
        lost, never as a success (guarantee 6). The coordinator runs it under ``finish``.
        """
        ...

    async def renew(self, grants: Sequence[Grant]) -> Sequence[Grant]:
        """Extend each grant by its ``lease_ttl``; return the grants found gone (lost)."""
        ...

    async def verify(self, grant: Grant) -> bool:
        """One round trip: True while ``grant`` is still held."""
        ...

    async def inspect(self, resource: str) -> tuple[tuple[HolderInfo, ...], int]:
        """Return the current holders of ``resource`` and the number of waiting requests."""
        ...

    async def read_generation(self, name: str) -> int:
        """Return the published generation of registry ``name`` (0 if never published)."""
        ...

    async def publish_generation(self, name: str, generation: int) -> int:
        """Raise the generation of ``name`` to at least ``generation``; return the result.

        Generations never go backwards: publishing a lower value leaves the higher one.
        """
        ...

    async def aclose(self) -> None:
        """Free every resource (connections, tasks). Grants still held are released.

        Requests still waiting must fail at once with an ``AgentLocksError`` (never be
        granted, never hang); the coordinator has already marked held leases lost.
        """
        ...


@runtime_checkable
class FastPath(Protocol):
    """Optional synchronous fast path of an in-process backend (``remote = False``).

    When a backend offers both methods, the coordinator tries ``try_acquire`` before
    creating any coroutine, and releases with ``release_nowait``. Semantics are exactly
    those of ``acquire(wait=False)`` (minus the ``Busy``) and ``release``.
    """

    def try_acquire(
        self, resource: str, shared: bool, capacity: int | None, lease_ttl: float
    ) -> Grant | None:
        """Grant now if FIFO and compatibility allow it, else return None; never suspends."""
        ...

    def release_nowait(self, grant: Grant) -> None:
        """``release`` without suspending."""
        ...


def describe(resource: str) -> str:
    """Return the user-facing key of a resource string (``"l:thread:1"`` -> ``"thread:1"``)."""
    return resource[2:]
