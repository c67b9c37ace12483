"""Optional backend capabilities, beside the :class:`~agentlocks.backends.Backend` contract.

A backend may implement any of these protocols on top of ``Backend``; the coordinator and
``agentlocks.langgraph`` check for them with ``isinstance`` (they are runtime-checkable).

Head records (:class:`HeadStore`: every built-in backend implements it;
``agentlocks.langgraph.guard_checkpointer`` needs it). A head record is a small string
stored beside a lock resource under a *field* (LangGraph: the head checkpoint id of one
``checkpoint_ns`` of the thread whose lock is the resource), plus the highest fencing token
that moved it. ``swap_head`` compares and updates it, fence included, atomically in one
round trip. Records expire by themselves ``ttl`` seconds after their last swap
(guarantee 9); an expired record is absent, its token forgotten with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from ._base import Grant, H

__all__ = ["Enumerable", "FastPath", "HeadStore", "HeadSwap"]


@dataclass(frozen=True, slots=True)
class HeadSwap:
    """What ``HeadStore.swap_head`` did.

    Attributes:
        outcome: ``"swapped"`` (the record now holds the new head), ``"conflict"`` (the
            record held another head than expected; unchanged) or ``"fenced"`` (the record
            was moved by a greater token than the caller's; unchanged).
        head: The head the record held before the call, ``""`` when it was absent. (After
            a conflict that raced the record's creation, ``""`` too: unknown.)
        token: The fencing token the record held before the call, or None.
        age: Seconds since the record was last swapped (the server's clock), None when it
            was absent. Not part of equality.
    """

    outcome: Literal["swapped", "conflict", "fenced"]
    head: str
    token: int | None
    age: float | None = field(default=None, compare=False)


@runtime_checkable
class HeadStore(Protocol):
    """Head records beside lock resources (see the module docstring). Optional for a
    third-party backend; every built-in backend implements it.

    Records are scoped by ``settings.namespace``, then by ``resource`` (a resource string
    as for locks, which a backend may use to place the records beside the lock's own
    state, e.g. in its Redis Cluster slot), then by ``field`` (any string). The value
    ``""`` means "no head": a record holding it is absent.
    """

    async def swap_head(
        self, resource: str, field: str, expected: str | None, new: str, token: int | None,
        ttl: float,
    ) -> HeadSwap:  # fmt: skip
        """Atomically compare and update one head record, fence included.

        In this order: a live record whose token is greater than ``token`` (``token`` not
        None) -> ``"fenced"``; ``expected`` not None, the record holding a head, and that
        head not ``expected`` -> ``"conflict"`` (so an absent record satisfies every
        expectation, and ``expected=""`` only an absent one). Otherwise the record becomes
        ``new`` (``""`` removes the head but keeps the fence), its token the greater of
        the stored one and ``token``, and it expires ``ttl`` seconds from now.
        """
        ...

    async def drop_heads(self, resource: str) -> None:
        """Remove every head record of ``resource`` (all fields), fences included."""
        ...


@runtime_checkable
class FastPath(Protocol[H]):
    """Optional synchronous fast path of a backend whose leases do not expire.

    When a backend with ``leases_expire = False`` offers both methods, the coordinator
    tries ``try_acquire`` before creating any coroutine, and releases with
    ``release_nowait``. (Where leases expire it is never used: its grants would bypass
    renewal.) Semantics are exactly those of ``acquire(wait=False)`` (minus the ``Busy``)
    and ``release``.
    """

    def try_acquire(
        self, resource: str, shared: bool, capacity: int | None, lease_ttl: float
    ) -> Grant[H] | None:
        """Grant now if FIFO and compatibility allow it, else return None; never suspends."""
        ...

    def release_nowait(self, grant: Grant[H]) -> None:
        """``release`` without suspending."""
        ...


@runtime_checkable
class Enumerable(Protocol):
    """Optional: a backend that can list the resources in use (``agentlocks inspect``).

    ``memory://`` lists its own entries (in-process only: another process's memory backend
    is out of reach); Redis scans its name records with ``SCAN`` (never ``KEYS``). A
    backend that keeps no record of names (PostgreSQL advisory locks are hashes) does not
    implement it.
    """

    async def keys(self, prefix: str) -> list[str]:
        """Sorted resources (``"l:<key>"``, ``"s:<name>"``) of this namespace whose key or
        name starts with ``prefix`` and that have, or recently had, holders or waiters.

        Best effort and not atomic: a resource may come or go while the listing runs.
        """
        ...
