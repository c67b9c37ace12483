"""What ``agentlocks inspect`` shows: every key in use in a namespace, from any backend.

Backends that implement :class:`~agentlocks.backends._base.Enumerable` list their
resources (``memory://`` only its own process's; Redis with ``SCAN``), then each one is
inspected like :meth:`Coordinator.inspect <agentlocks.Coordinator.inspect>` does. PostgreSQL
keeps no names (advisory keys are hashes): the survey then inspects the exact key the user
named, if any, and lists the database's advisory locks by key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .backends._base import HolderInfo, describe
from .backends._capabilities import Enumerable

if TYPE_CHECKING:
    from .coordinator import Coordinator

__all__ = ["Entry", "Survey", "survey"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One lock key or semaphore name in use."""

    key: str
    kind: str  # "lock" or "semaphore"
    holders: tuple[HolderInfo, ...]
    waiting: int


@dataclass(slots=True)
class Survey:
    """One snapshot of a namespace. Not atomic: keys may change while it is taken."""

    url: str
    namespace: str
    entries: list[Entry] = field(default_factory=list)
    advisory: list[dict[str, Any]] = field(default_factory=list)
    """PostgreSQL only: advisory locks of other sessions, by key (names are not stored)."""
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``--json``)."""
        return {
            "url": self.url,
            "namespace": self.namespace,
            "keys": [
                {
                    "key": e.key,
                    "kind": e.kind,
                    "waiting": e.waiting,
                    "holders": [
                        {"token": h.token, "mode": mode(e.kind, h), "age": round(h.age, 3)}
                        for h in e.holders
                    ],
                }
                for e in self.entries
            ],
            "advisory_locks": self.advisory,
            "notes": self.notes,
        }


def mode(kind: str, holder: HolderInfo) -> str:
    """``exclusive``, ``shared`` or ``slot`` (a semaphore slot)."""
    if kind == "semaphore":
        return "slot"
    return "shared" if holder.shared else "exclusive"


async def survey(coord: Coordinator, prefix: str = "", *, idle: bool = False) -> Survey:
    """Inspect every key of ``coord``'s namespace whose name starts with ``prefix``.

    On PostgreSQL, advisory locks that belong to ``prefix`` taken as an exact key get a
    ``name``.

    Args:
        coord: The coordinator to look through (its backend and namespace).
        prefix: Only keys and semaphore names starting with this.
        idle: Also list keys with a recent record but no holder or waiter (Redis).
    """
    result = Survey(url=coord._settings.redacted_url, namespace=coord.namespace)
    backend = coord.backend
    if isinstance(backend, Enumerable):
        resources = await backend.keys(prefix)
        if not backend.shared_state:
            result.notes.append(
                "memory:// is in-process: this lists only this process's own locks; "
                "another process's memory:// locks cannot be seen from here"
            )
    else:
        resources = [kind + prefix for kind in ("l:", "s:")] if prefix else []
        lister = getattr(backend, "advisory_locks", None)
        if lister is not None:
            result.advisory = [asdict(row) for row in await lister()]
            _label(result.advisory, coord.namespace, prefix)
            result.notes.append(
                "PostgreSQL keeps no key names (advisory locks are 64-bit hashes): pass an "
                "exact key to see it by name; other advisory locks are listed by key"
            )
        else:
            result.notes.append(f"{type(backend).__name__} cannot list keys; pass an exact key")
    for resource in resources:
        holders, waiting = await backend.inspect(resource)
        if holders or waiting or idle:
            kind = "semaphore" if resource.startswith("s:") else "lock"
            result.entries.append(Entry(describe(resource), kind, holders, waiting))
    return result


def _label(rows: list[dict[str, Any]], namespace: str, key: str) -> None:
    """Name the advisory locks that belong to ``key`` (a lock or a semaphore of that name)."""
    from .backends.postgres._sql import MAX_SLOTS, TICKET_BITS, keys_for

    lock, sem = keys_for(namespace, "l:" + key), keys_for(namespace, "s:" + key)
    names = {lock.gate: f"lock {key!r} (queue gate)", lock.hold: f"lock {key!r}"}
    names[sem.gate] = f"semaphore {key!r} (queue gate)"
    for row in rows:
        k = row["key"]
        if k in names:
            row["name"] = names[k]
        elif 0 <= k - sem.slot_base < MAX_SLOTS:
            row["name"] = f"semaphore {key!r} slot {k - sem.slot_base}"
        elif any(0 <= k - b < TICKET_BITS for b in (lock.ticket_base, sem.ticket_base)):
            row["name"] = f"{key!r} queue length (published)"
