"""A separate OS process for the multi-process tests: ``python -m tests.redis._worker``.

Modes (the first argument):

* ``count URL NAMESPACE TASKS COUNTER_KEY``: print ``READY``, wait for a line on stdin, then
  run TASKS tasks that each take the lock ``counter`` once and do a non-atomic
  read-sleep-write of COUNTER_KEY under it; print one JSON line per critical section:
  ``{"token": ..., "enter": ns, "exit": ns}`` (``time.monotonic_ns()``, one clock for every
  process of the machine).
* ``hold URL NAMESPACE KEY LEASE_TTL``: take KEY, print ``HELD <token>``, sleep until killed.
* ``wait URL NAMESPACE KEY LEASE_TTL``: wait for KEY (to be killed while queued).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import redis.asyncio as aioredis

import agentlocks


async def count(url: str, namespace: str, tasks: int, counter_key: str) -> None:
    """Read-sleep-write COUNTER_KEY under one lock from TASKS tasks; report each section."""
    async with agentlocks.connect(url, namespace=namespace) as coord:
        raw = aioredis.Redis.from_url(url)
        await raw.ping()
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        records: list[dict[str, int]] = []

        async def one() -> None:
            async with coord.acquire("counter", timeout=60) as lease:
                enter = time.monotonic_ns()
                value = int(await raw.get(counter_key) or 0)
                await asyncio.sleep(random.uniform(0, 0.002))
                await raw.set(counter_key, value + 1)
                records.append({"token": lease.token, "enter": enter, "exit": time.monotonic_ns()})

        await asyncio.gather(*(one() for _ in range(tasks)))
        await raw.aclose()
    for record in records:
        print(json.dumps(record), flush=True)


async def hold(url: str, namespace: str, key: str, lease_ttl: float) -> None:
    """Take KEY and keep it (renewed) until the process is killed."""
    coord = agentlocks.connect(url, namespace=namespace, lease_ttl=lease_ttl)
    lease = await coord.acquire(key)
    print(f"HELD {lease.token}", flush=True)
    await asyncio.sleep(3600)


async def wait(url: str, namespace: str, key: str, lease_ttl: float) -> None:
    """Queue for KEY and wait (the test kills the process while it waits)."""
    coord = agentlocks.connect(url, namespace=namespace, lease_ttl=lease_ttl)
    await coord.acquire(key)
    print("GRANTED", flush=True)
    await asyncio.sleep(3600)


def main(argv: list[str]) -> None:
    """Run the mode named by ``argv[0]``."""
    mode, url, namespace, *rest = argv
    if mode == "count":
        asyncio.run(count(url, namespace, int(rest[0]), rest[1]))
    elif mode == "hold":
        asyncio.run(hold(url, namespace, rest[0], float(rest[1])))
    elif mode == "wait":
        asyncio.run(wait(url, namespace, rest[0], float(rest[1])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
