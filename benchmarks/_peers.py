"""The benchmark's scenarios and the peer lock libraries, all inside this repository.

The scripts of this folder used to load ``../shared/bench/peer_bench.py``; this module
replaces it with our own code, so a clean clone runs them. It keeps that module's
interface (the names the scripts use), built on :mod:`agentlocks._bench` (the scenarios
and raw floors, shared with ``agentlocks bench``) plus adapters for the peer libraries,
each imported only when its adapter is set up:

* ``AsyncioLockAdapter``, ``AnyioLockAdapter(fast_acquire)``: in-process locks.
* ``RedisPingAdapter``, ``RedisRawAdapter``: Redis round trip and the ``SET NX`` floor.
* ``RedisPyLockAdapter(sleep)``: ``redis.asyncio.lock.Lock`` (polls every ``sleep`` s).
* ``PythonRedisLockAdapter``: python-redis-lock (sync only: run in a thread pool of its own,
  large enough that blocked ``BLPOP`` waiters cannot starve it).
* ``PotteryAdapter``: pottery's ``AIORedlock`` on one master.
* ``PgSelect1Adapter``, ``PgAdvisoryAdapter(reset)``: PostgreSQL round trip and floor.

Servers: Redis at ``$PB_REDIS_HOST:$PB_REDIS_PORT`` (default ``127.0.0.1:6391``, read when
an adapter is set up); PostgreSQL at the module attribute ``PG_DSN`` (``$PB_PG_DSN``).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentlocks import _bench
from agentlocks._bench import RUN_ID, Adapter, pct, run_scenario
from agentlocks._bench import uncontended as sc_uncontended

__all__ = [
    "PG_DSN",
    "RUN_ID",
    "Adapter",
    "AnyioLockAdapter",
    "AsyncioLockAdapter",
    "PgAdvisoryAdapter",
    "PgSelect1Adapter",
    "PotteryAdapter",
    "PythonRedisLockAdapter",
    "RedisPingAdapter",
    "RedisPyLockAdapter",
    "RedisRawAdapter",
    "pct",
    "run_scenario",
    "sc_uncontended",
]

PG_DSN = os.environ.get("PB_PG_DSN", "postgresql://postgres@127.0.0.1:5441/postgres")


def redis_url() -> str:
    """The Redis server the peer adapters use (``$PB_REDIS_HOST``/``$PB_REDIS_PORT``)."""
    host = os.environ.get("PB_REDIS_HOST", "127.0.0.1")
    return f"redis://{host}:{os.environ.get('PB_REDIS_PORT', '6391')}/0"


def _client(max_connections: int = 256) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(redis_url(), max_connections=max_connections)


class AsyncioLockAdapter(_bench.AsyncioLockFloor):
    """``dict[key] -> asyncio.Lock``: the in-process floor."""


class AnyioLockAdapter(Adapter):
    """``dict[key] -> anyio.Lock``; by default it yields to the loop on every acquire."""

    kind = "inproc"

    def __init__(self, fast_acquire: bool = False) -> None:
        self.fast = fast_acquire
        self.name = "anyio-lock" + ("-fast" if fast_acquire else "")
        self.notes = f"dict[key] -> anyio.Lock(fast_acquire={fast_acquire})"

    async def setup(self) -> None:
        import anyio

        self.locks: dict[str, anyio.Lock] = {}
        self._new = lambda: anyio.Lock(fast_acquire=self.fast)

    async def acquire(self, key: str) -> Any:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = self._new()
        await lock.acquire()
        return lock

    async def release(self, handle: Any) -> None:
        handle.release()


class RedisPingAdapter(_bench.RedisPingFloor):
    """One ``PING`` per operation, on ``redis_url()`` at setup time."""

    def __init__(self) -> None:
        super().__init__("")

    async def setup(self) -> None:
        self.url = redis_url()
        await super().setup()


class RedisRawAdapter(_bench.RedisSetNxFloor):
    """``SET NX PX`` + compare-and-delete (polled when contended): the Redis floor."""

    def __init__(self, poll: float = 0.001) -> None:
        super().__init__("", poll)

    async def setup(self) -> None:
        self.url = redis_url()
        await super().setup()


class RedisPyLockAdapter(Adapter):
    """``redis.asyncio.lock.Lock``: defaults (``sleep=0.1`` s polling) or a given ``sleep``."""

    kind = "redis"

    def __init__(self, sleep: float | None = None) -> None:
        self.sleep = sleep
        self.name = "redis-py-lock" + ("" if sleep is None else f"-sleep{sleep:g}")
        self.notes = (
            "redis.asyncio.lock.Lock, defaults (sleep=0.1 s poll, timeout=None)"
            if sleep is None
            else f"redis.asyncio.lock.Lock(sleep={sleep})"
        )

    async def setup(self) -> None:
        self.r = _client()

    async def teardown(self) -> None:
        await self.r.aclose()

    async def acquire(self, key: str) -> Any:
        options = {} if self.sleep is None else {"sleep": self.sleep}
        lock = self.r.lock("pb:" + key, **options)
        await lock.acquire()
        return lock

    async def release(self, handle: Any) -> None:
        await handle.release()


class PythonRedisLockAdapter(Adapter):
    """python-redis-lock (``GET`` + ``SET NX``, ``BLPOP`` signal), sync, in 256 threads.

    The default executor has too few workers: more waiters blocked in ``BLPOP`` than it
    has threads would deadlock the benchmark.
    """

    name = "python-redis-lock"
    kind = "redis"
    notes = "sync redis_lock.Lock (GET+SET NX, BLPOP signal) via dedicated 256-thread executor"

    async def setup(self) -> None:
        import redis_lock

        import redis

        self._lock_cls = redis_lock.Lock
        self.r = redis.Redis.from_url(redis_url(), max_connections=512)
        self.pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="python-redis-lock")
        self.loop = asyncio.get_running_loop()

    async def teardown(self) -> None:
        self.pool.shutdown(wait=True)
        self.r.close()

    def _acquire(self, key: str) -> Any:
        lock = self._lock_cls(self.r, "pb:" + key)
        lock.acquire()
        return lock

    async def acquire(self, key: str) -> Any:
        return await self.loop.run_in_executor(self.pool, self._acquire, key)

    async def release(self, handle: Any) -> None:
        await self.loop.run_in_executor(self.pool, handle.release)


class PotteryAdapter(Adapter):
    """pottery's ``AIORedlock`` on one master, a new lock object per acquire."""

    name = "pottery-aioredlock"
    kind = "redis"
    notes = "pottery.AIORedlock, one master, new object per acquire"

    async def setup(self) -> None:
        from pottery import AIORedlock

        self._lock_cls = AIORedlock
        self.r = _client()

    async def teardown(self) -> None:
        await self.r.aclose()

    async def acquire(self, key: str) -> Any:
        lock = self._lock_cls(key="pb:" + key, masters={self.r})
        if not await lock.acquire():
            raise RuntimeError("AIORedlock.acquire() gave up")
        return lock

    async def release(self, handle: Any) -> None:
        await handle.release()


class PgSelect1Adapter(_bench.PgSelect1Floor):
    """One ``SELECT 1`` per operation, on ``PG_DSN`` at setup time."""

    def __init__(self) -> None:
        super().__init__("")

    async def setup(self) -> None:
        self.url = PG_DSN
        await super().setup()


class PgAdvisoryAdapter(_bench.PgAdvisoryFloor):
    """asyncpg pool + ``pg_advisory_lock``, on ``PG_DSN``; ``reset=False`` is the floor."""

    def __init__(self, reset: bool = True) -> None:
        super().__init__("", reset)

    async def setup(self) -> None:
        self.url = PG_DSN
        await super().setup()
