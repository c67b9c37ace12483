"""A worker process for the failover tests: ``python -m tests.redis._failover_worker``.

``count URL NAMESPACE TASKS COUNTER_URL COUNTER_KEY``: print ``READY``, wait for a line on
stdin, then run TASKS tasks that each take the lock ``counter`` once (retrying while the
deployment fails over: ``BackendError`` or a timeout) and do a non-atomic
read-sleep-write of COUNTER_KEY, kept on another server (COUNTER_URL), under it. Print one
JSON line per critical section: ``{"token", "enter", "exit", "lost"}`` (monotonic ns;
``lost``: the section ended with ``LeaseLost``). URL options (``?min_replicas=1``) apply.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import redis.asyncio as aioredis

import agentlocks
from agentlocks import AcquireTimeout, BackendError, LeaseLost


async def count(url: str, namespace: str, tasks: int, counter_url: str, counter_key: str) -> None:
    """Read-sleep-write COUNTER_KEY under one lock from TASKS tasks, across a failover."""
    async with agentlocks.connect(url, namespace=namespace, lease_ttl=5) as coord:
        raw = aioredis.Redis.from_url(counter_url)
        await raw.ping()
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        records: list[dict[str, int]] = []

        async def one() -> None:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                try:
                    record: dict[str, int] = {}
                    async with coord.acquire("counter", timeout=10) as lease:
                        record.update(token=lease.token, enter=time.monotonic_ns(), lost=0)
                        value = int(await raw.get(counter_key) or 0)
                        await asyncio.sleep(random.uniform(0, 0.002))
                        await raw.set(counter_key, value + 1)
                        record["exit"] = time.monotonic_ns()
                    records.append(record)
                    return
                except LeaseLost:
                    record.update(lost=1, exit=record.get("exit", time.monotonic_ns()))
                    records.append(record)
                    return
                except (BackendError, AcquireTimeout):
                    if "exit" in record:  # the section ran; only its release failed
                        records.append(record)
                        return
                    await asyncio.sleep(0.05)  # failing over: try again

        await asyncio.gather(*(one() for _ in range(tasks)))
        await raw.aclose()
    for record in records:
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    _, url, namespace, tasks, counter_url, counter_key = sys.argv[1:]
    asyncio.run(count(url, namespace, int(tasks), counter_url, counter_key))
