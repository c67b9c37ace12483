"""The adapters ``agentlocks bench`` and ``benchmarks/`` measure: raw floors and agentlocks.

An *adapter* has ``name``, ``kind`` (``inproc``, ``redis`` or ``pg``: it picks the floor a
figure is compared with), ``scenarios``, ``notes``, and four coroutines: ``setup()``,
``teardown()``, ``acquire(key) -> handle`` (returns once held) and ``release(handle)``.
The floors are the cheapest correct lock of each kind, written directly against the
driver: ``dict[key] -> asyncio.Lock``; Redis ``SET NX PX`` plus a compare-and-delete script
(polling every millisecond when contended); PostgreSQL ``pg_advisory_lock`` on an asyncpg
pool without its reset round trip. One-round-trip adapters (``PING``, ``SELECT 1``) give
the network floor of the uncontended scenario. Drivers are imported at ``setup()``.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any, ClassVar, Final

__all__ = [
    "ALL_SCENARIOS",
    "RUN_ID",
    "Adapter",
    "AgentlocksAdapter",
    "AsyncioLockFloor",
    "PgAdvisoryFloor",
    "PgSelect1Floor",
    "RedisPingFloor",
    "RedisSetNxFloor",
    "pg_key",
]

#: Names the keys and namespaces of one process's runs.
RUN_ID: Final = uuid.uuid4().hex[:8]
ALL_SCENARIOS: Final = ("uncontended", "handoff", "manykeys", "fairness")


class Adapter:
    """The adapter interface (see the module docstring); subclasses override the coroutines."""

    name: str = "base"
    kind: str = "inproc"
    scenarios: ClassVar[frozenset[str]] = frozenset(ALL_SCENARIOS)
    notes: str = ""

    async def setup(self) -> None:
        """Connect (pools, scripts)."""

    async def teardown(self) -> None:
        """Disconnect."""

    async def acquire(self, key: str) -> Any:
        """Return a handle once ``key`` is held."""
        raise NotImplementedError

    async def release(self, handle: Any) -> None:
        """Release what ``acquire`` returned."""
        raise NotImplementedError


class AsyncioLockFloor(Adapter):
    """``dict[key] -> asyncio.Lock``: the in-process floor."""

    name = "asyncio-lock"
    kind = "inproc"
    notes = "dict[key] -> asyncio.Lock (in-process floor)"

    async def setup(self) -> None:
        self.locks: dict[str, asyncio.Lock] = {}

    async def acquire(self, key: str) -> asyncio.Lock:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        await lock.acquire()
        return lock

    async def release(self, handle: asyncio.Lock) -> None:
        handle.release()


_COMPARE_AND_DELETE: Final = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


class RedisSetNxFloor(Adapter):
    """``SET k token NX PX 30000`` + compare-and-delete: the Redis floor (2 round trips)."""

    kind = "redis"

    def __init__(self, url: str, poll: float = 0.001) -> None:
        self.url, self.poll = url, poll
        self.name = "redis-raw-setnx"
        self.notes = (
            "floor: SET k tok NX PX 30000 + EVALSHA compare-and-del (2 RTT); "
            f"contended: poll every {poll * 1e3:g} ms"
        )

    async def setup(self) -> None:
        import redis.asyncio as aioredis

        self.r = aioredis.Redis.from_url(self.url, max_connections=256)
        self.cas = self.r.register_script(_COMPARE_AND_DELETE)

    async def teardown(self) -> None:
        await self.r.aclose()

    async def acquire(self, key: str) -> tuple[str, str]:
        name, token = f"agentlocks-bench:{key}", uuid.uuid4().hex
        # Polled by design: this is the floor a polling lock cannot beat.
        while not await self.r.set(name, token, nx=True, px=30000):  # noqa: ASYNC110
            await asyncio.sleep(self.poll)
        return name, token

    async def release(self, handle: tuple[str, str]) -> None:
        await self.cas(keys=[handle[0]], args=[handle[1]])


class RedisPingFloor(Adapter):
    """One ``PING`` per operation: the floor of any Redis round trip."""

    name = "redis-ping-rtt"
    kind = "redis"
    scenarios: ClassVar[frozenset[str]] = frozenset({"uncontended"})
    notes = "one PING per op (1 RTT): physical floor of any Redis round trip"

    def __init__(self, url: str) -> None:
        self.url = url

    async def setup(self) -> None:
        import redis.asyncio as aioredis

        self.r = aioredis.Redis.from_url(self.url)

    async def teardown(self) -> None:
        await self.r.aclose()

    async def acquire(self, key: str) -> None:
        await self.r.ping()

    async def release(self, handle: None) -> None:
        pass


def pg_key(key: str) -> int:
    """A signed 64-bit advisory key for ``key``."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


async def _no_reset(conn: Any) -> None:
    return None  # asyncpg's default reset on release costs one more round trip


def _dsn(url: str) -> str:
    return url.split("?", 1)[0]


class PgAdvisoryFloor(Adapter):
    """asyncpg pool + ``pg_advisory_lock``: the PostgreSQL floor (the server queues)."""

    kind = "pg"

    def __init__(self, url: str, reset: bool = False) -> None:
        self.url, self.reset = url, reset
        self.name = "pg-advisory" + ("" if reset else "-noreset")
        self.notes = (
            "asyncpg pool (max 80): acquire conn + SELECT pg_advisory_lock($1); "
            "release: pg_advisory_unlock + pool.release"
            + (" (default pool reset = extra RTT)" if reset else " with reset=noop")
        )

    async def setup(self) -> None:
        import asyncpg

        extra: dict[str, Any] = {} if self.reset else {"reset": _no_reset}
        self.pool = await asyncpg.create_pool(_dsn(self.url), min_size=10, max_size=80, **extra)

    async def teardown(self) -> None:
        await self.pool.close()

    async def acquire(self, key: str) -> tuple[Any, int]:
        kid = pg_key(key)
        conn = await self.pool.acquire()
        await conn.execute("SELECT pg_advisory_lock($1)", kid)
        return conn, kid

    async def release(self, handle: tuple[Any, int]) -> None:
        conn, kid = handle
        await conn.execute("SELECT pg_advisory_unlock($1)", kid)
        await self.pool.release(conn)


class PgSelect1Floor(Adapter):
    """One ``SELECT 1`` per operation on one connection: the PostgreSQL round trip."""

    name = "pg-select1-rtt"
    kind = "pg"
    scenarios: ClassVar[frozenset[str]] = frozenset({"uncontended"})
    notes = "one SELECT 1 per op on a dedicated asyncpg connection (1 RTT)"

    def __init__(self, url: str) -> None:
        self.url = url

    async def setup(self) -> None:
        import asyncpg

        self.conn = await asyncpg.connect(_dsn(self.url))

    async def teardown(self) -> None:
        await self.conn.close()

    async def acquire(self, key: str) -> None:
        await self.conn.fetchval("SELECT 1")

    async def release(self, handle: None) -> None:
        pass


class AgentlocksAdapter(Adapter):
    """agentlocks on any URL, in a namespace of its own (its keys expire by themselves)."""

    def __init__(self, url: str = "memory://", name: str | None = None) -> None:
        from ._url import redact_url

        self.url = url
        scheme = url.split(":", 1)[0]
        self.kind = (
            "redis" if scheme.startswith("redis") else "pg" if "postgres" in scheme else ("inproc")
        )
        self.name = name or f"agentlocks-{scheme.split('+')[0]}"
        self.notes = f"agentlocks on {redact_url(url)}"

    async def setup(self) -> None:
        from .coordinator import connect

        self.coord = connect(self.url, namespace=f"bench-{RUN_ID}-{uuid.uuid4().hex[:6]}")

    async def teardown(self) -> None:
        await self.coord.aclose()

    async def acquire(self, key: str) -> Any:
        return await self.coord.acquire(key)

    async def release(self, handle: Any) -> None:
        await handle.release()
