"""Every advisory lock of the database, for ``agentlocks inspect`` on PostgreSQL.

PostgreSQL keeps no record of agentlocks' key names: a resource is a 64-bit hash
(``postgres/_sql.py``), and a table of names written on first use would be state that never
expires by itself (API.md guarantee 9) plus a write per new key. So enumeration reports
advisory locks *by key*: from ``pg_locks``, with each session's ``application_name``
(agentlocks sessions say ``agentlocks`` unless configured otherwise) and, for waiters,
how long they have waited (``waitstart``, PostgreSQL >= 14). A caller who knows a key name
matches it to its hashes with :func:`~agentlocks.backends.postgres._sql.keys_for`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._session import Sessions

__all__ = ["AdvisoryLock", "advisory_locks"]

# One row per (session, advisory key) in the current database. ``waitstart`` exists from
# PostgreSQL 14 on; to_jsonb reads it without failing on older servers.
_SQL = (
    "SELECT ((l.classid::bigint << 32) | l.objid::bigint) AS key, l.pid, l.granted, l.mode,"
    " coalesce(a.application_name, '') AS app,"
    " extract(epoch FROM clock_timestamp() - (to_jsonb(l) ->> 'waitstart')::timestamptz)"
    " AS waited"
    " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " ORDER BY key, l.granted DESC, waited DESC NULLS LAST, l.pid"
)


@dataclass(frozen=True, slots=True)
class AdvisoryLock:
    """One session's hold of, or wait for, one advisory key."""

    key: int
    pid: int
    granted: bool
    shared: bool
    application: str
    waited: float | None
    """Seconds this session has waited (waiters on PostgreSQL >= 14), else None."""


async def advisory_locks(sessions: Sessions, own: frozenset[int]) -> list[AdvisoryLock]:
    """Every advisory lock row of the database but those of ``own`` sessions (pids)."""
    session = await sessions.shared()
    with sessions.errors.map_driver_errors():
        rows = await session.fetch(_SQL)
    return [
        AdvisoryLock(
            key=int(r["key"]),
            pid=int(r["pid"]),
            granted=bool(r["granted"]),
            shared=r["mode"] == "ShareLock",
            application=str(r["app"]),
            waited=None if r["waited"] is None else float(r["waited"]),
        )
        for r in rows
        if r["pid"] not in own
    ]
