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
plain name, apart from locks (Redis keeps each beside its registry's lock, for the fence).

Semantics every method must keep (the guarantees of API.md, from the backend's side):

* ``acquire`` returns only once the request is granted. A request is grantable when every
  earlier request for the resource has been granted or has left, and it is compatible with
  the current holders: exclusive needs no holder; shared (``capacity is None``) needs no
  exclusive holder; a semaphore request (``capacity`` set) needs fewer than ``capacity``
  holders. Adjacent grantable requests at the head are granted together.
* ``acquire`` is cancellation-safe at every await: if the calling task is cancelled (the
  coordinator implements ``timeout`` this way, so backends never see it), the request
  leaves the queue, and a grant
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

Optional capabilities (head records, the in-process fast path, listing) are in
``_capabilities.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Protocol,
    overload,
    runtime_checkable,
)

from typing_extensions import TypeVar

if TYPE_CHECKING:
    from agentlocks._tasks import TaskSupervisor
    from agentlocks._url import Settings

__all__ = [
    "Backend",
    "Grant",
    "HolderInfo",
    "KeyInfo",
    "LostCallback",
    "SignalCallback",
]

H_co = TypeVar("H_co", covariant=True, default=object)
"""The type of a grant's handle. Code that does not know the backend sees ``object``."""

H = TypeVar("H", default=Any)
"""The handle type of a backend's grants. A bare ``Backend`` is a backend of any handle."""


class Grant(Generic[H_co]):
    """One granted request, as the backend issued it: ``Grant[H]`` carries a handle of type H.

    Identity is the grant: two grants are never equal, even with equal fields. (A plain
    slotted class rather than a dataclass: one is built on every acquire, and the
    hand-written constructor is measurably cheaper.) A backend types its grants with its
    own handle (``Grant[RedisHandle]``) and reads ``grant.handle`` without a cast; the
    handle is set once, by the constructor.

    Attributes:
        resource: The resource string the grant is on (``"l:<key>"`` and so on).
        token: The fencing token.
        shared: False for an exclusive lock; True for shared locks and semaphore slots.
        lease_ttl: Seconds the lease lives without renewal (where leases expire).
        acquired_at: ``time.monotonic()`` when the grant was made, for ``inspect``.
        handle: Backend-private data (an owner id, a connection, ...); None if not given.
    """

    __slots__ = ("acquired_at", "handle", "lease_ttl", "resource", "shared", "token")

    handle: H_co  # (declared here: the constructor's implementation takes Any)

    @overload
    def __init__(
        self: Grant[None],
        resource: str,
        token: int,
        shared: bool,
        lease_ttl: float,
        acquired_at: float,
    ) -> None: ...

    @overload
    def __init__(
        self,
        resource: str,
        token: int,
        shared: bool,
        lease_ttl: float,
        acquired_at: float,
        handle: H_co,
    ) -> None: ...

    def __init__(
        self,
        resource: str,
        token: int,
        shared: bool,
        lease_ttl: float,
        acquired_at: float,
        handle: Any = None,
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


LostCallback = Callable[[Grant[object]], None]
"""Called by a backend, on the event loop, when it learns on its own that a grant is gone."""

SignalCallback = Callable[[str, int], None]
"""Called by a backend, on the event loop, with ``(kind, mark)`` of a signal a watch receives."""


def deliver_safely(deliver: SignalCallback, kind: str, mark: int) -> None:
    """Call a watch's callback; an error in it is logged, never raised into the backend.

    Backends deliver from the task that reads their subscription (or from the sender, in
    process): a failing callback must not break that reader or the sender.
    """
    try:
        deliver(kind, mark)
    except Exception:
        logging.getLogger("agentlocks").exception("a signal watch failed on %r", kind)


@runtime_checkable
class Backend(Protocol[H]):
    """What a backend implements. Constructed as ``cls(settings, on_lost, tasks)``, no I/O.

    ``Backend[H]`` issues ``Grant[H]``: a backend names its handle type in its signatures
    (``async def release(self, grant: Grant[MyHandle]) -> bool``), and gets only its own
    grants back.

    ``tasks`` is the coordinator's :class:`~agentlocks._tasks.TaskSupervisor`: every
    background task of the backend is started with ``tasks.spawn(...)`` (never a bare
    ``create_task``), so failures are logged and ``aclose()`` ends them all. Cleanup steps
    that must survive cancellation (release, withdrawing a cancelled request) run under
    :func:`agentlocks._tasks.finish`.

    Class attributes:
        leases_expire: True when a grant ends by itself ``lease_ttl`` seconds after its
            last renewal (a server-side lease: Redis, PostgreSQL). The coordinator then
            renews grants in the background (one task per coordinator, calling ``renew``
            in batches), tracks them so that a lost one cancels its holder, and reports a
            ``release`` that answers False as a lost lease. False promises that a grant is
            never lost while held (``memory://``): none of that machinery runs, and the
            :class:`FastPath`, if the backend offers it, is used.
        shared_state: True when coordinators on the same URL and namespace share one state
            (a server): they exclude each other, their tokens grow together, a signal or
            registry generation sent through one reaches the others, and ``keys()`` lists
            every coordinator's resources. False when each coordinator's backend instance
            keeps its own (``memory://``). The coordinator does not read it; the
            conformance suite and ``agentlocks inspect`` do.
        option_names: Backend-specific options accepted in the URL query or as keywords.
        release_finishes: Optional, default False. True promises that ``release`` runs to
            its end on the server even if its caller is cancelled, repeatedly (it waits on
            its own ``finish``, on futures that refuse ``cancel()``, or never suspends):
            the coordinator then awaits it directly instead of through
            :func:`~agentlocks._tasks.finish`, which costs a task and three loop wake-ups.

    Additional methods: :class:`HeadStore` (``swap_head``, ``drop_heads``), which every
    built-in backend implements and ``guard_checkpointer`` requires.
    """

    leases_expire: ClassVar[bool]
    shared_state: ClassVar[bool]
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
    ) -> Grant[H]:
        """Wait in FIFO order until the request is granted; return the grant.

        There is no ``timeout``: the coordinator enforces one by cancelling this call,
        which must leave nothing held or queued (see the module docstring).
        """
        ...

    async def release(self, grant: Grant[H]) -> bool:
        """End ``grant`` (idempotent) and hand the resource to the next waiters.

        Returns True if the server still had the grant, False if it was already gone
        (expired, or given to another client): the coordinator then reports the lease as
        lost, never as a success (guarantee 6). The coordinator runs it under ``finish``.
        """
        ...

    async def renew(self, grants: Sequence[Grant[H]]) -> Sequence[Grant[H]]:
        """Extend each grant by its ``lease_ttl``; return the grants found gone (lost)."""
        ...

    async def verify(self, grant: Grant[H]) -> bool:
        """One round trip: True while ``grant`` is still held."""
        ...

    async def inspect(self, resource: str) -> tuple[tuple[HolderInfo, ...], int]:
        """Return the current holders of ``resource`` and the number of waiting requests."""
        ...

    async def read_generation(self, name: str) -> int:
        """Return the published generation of registry ``name`` (0 if never published)."""
        ...

    async def publish_generation(self, name: str, generation: int, grant: Grant[H]) -> bool:
        """Publish ``generation`` for registry ``name``, fenced by the writer's ``grant``.

        ``grant`` is the writer's exclusive grant on the registry's lock (the resource
        ``"l:" + name``). In one atomic step, the backend checks that ``grant`` is still
        held and raises the stored generation to at least ``generation``; if the grant is
        gone (its lease ran out, it was released or given away), nothing is written and
        the answer is False (the registry then raises ``LeaseLost``). True once published.

        Generations never go backwards: publishing a lower value leaves the higher one,
        and the stored generation must outlive idle periods (no expiry that would make it
        read as 0 again).
        """
        ...

    async def signal(self, resource: str, kind: str, *, ttl: float, mark: int | None = None) -> int:
        """Send signal ``kind`` to the holders of ``resource``, in any process; return its mark.

        The *mark* is a fresh token: greater than the token of every grant on ``resource``
        made before the call, smaller than the token of every grant made after it. So a
        holder acts on a signal only if its mark exceeds the holder's own token, and a
        signal meant for one holder never reaches the next one. (``mark``: reuse the mark
        an earlier call returned, to reach exactly the holders that one reached.)

        Durable: the highest mark of each ``kind`` is kept as a record of the resource
        that expires after ``ttl`` seconds, read by every watch that starts and again
        after a watch's subscription reconnects; and ``(kind, mark)`` is pushed to the
        current watches of the resource. Signals are rare; their cost is one round trip.
        """
        ...

    def watch_signals(
        self, resource: str, deliver: SignalCallback
    ) -> AbstractAsyncContextManager[None]:
        """Deliver the signals of ``resource`` to ``deliver(kind, mark)`` while inside.

        Entering returns once the watch is subscribed (pushed, never polled) and the
        records stored at that moment were delivered, so a signal sent just before the
        watch started is not missed. After a lost subscription is restored, the records
        are delivered again: ``deliver`` must be idempotent. It runs on the event loop
        and must not block. Nothing is delivered once the block is left.
        """
        ...

    async def clear_signal(self, resource: str, kind: str, mark: int) -> None:
        """Delete the record of ``kind`` on ``resource`` if its mark is still ``mark``."""
        ...

    async def aclose(self) -> None:
        """Free every resource (connections, tasks). Grants still held are released.

        Requests still waiting must fail at once with an ``AgentLocksError`` (never be
        granted, never hang); the coordinator has already marked held leases lost.
        """
        ...


def describe(resource: str) -> str:
    """Return the user-facing key of a resource string (``"l:thread:1"`` -> ``"thread:1"``)."""
    return resource[2:]
