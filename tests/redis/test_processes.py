"""Several OS processes on one Redis server: exclusion, fencing, crashes."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

from agentlocks.backends.redis._scripts import lock_keys
from tests.support.waiting import until_waiting

from .conftest import Connect, start

ROOT = Path(__file__).resolve().parents[2]


def spawn(*args: object) -> subprocess.Popen[str]:
    """Start ``python -m tests.redis._worker ARGS`` with pipes for stdin and stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.redis._worker", *map(str, args)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


async def read_line(process: subprocess.Popen[str]) -> str:
    """The next line the worker prints (its stdout is a pipe)."""
    assert process.stdout is not None
    return (await asyncio.to_thread(process.stdout.readline)).strip()


def stop(process: subprocess.Popen[str]) -> None:
    """Kill the worker if it still runs, close its pipes and reap it."""
    if process.poll() is None:
        process.kill()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()
    process.wait(10)


async def test_four_processes_never_overlap_and_lose_no_increment(
    redis_url: str, namespace: str, raw: aioredis.Redis
) -> None:
    """4 processes x 25 tasks read-sleep-write a counter: exact, fenced, no overlap."""
    counter_key = f"{namespace}:counter"
    workers = [spawn("count", redis_url, namespace, 25, counter_key) for _ in range(4)]
    try:
        for worker in workers:
            assert await read_line(worker) == "READY"
        for worker in workers:  # start them together, so that they contend
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = await asyncio.gather(
            *(asyncio.to_thread(worker.communicate, timeout=45) for worker in workers)
        )
    finally:
        for worker in workers:
            stop(worker)
    assert [worker.returncode for worker in workers] == [0, 0, 0, 0]
    records = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    assert len(records) == 100
    assert int(await raw.get(counter_key)) == 100  # no lost update
    records.sort(key=lambda r: r["enter"])
    tokens = [r["token"] for r in records]
    assert tokens == sorted(tokens) and len(set(tokens)) == 100, "tokens not in grant order"
    for before, after in itertools.pairwise(records):
        assert before["exit"] <= after["enter"], "two critical sections overlapped"
    await raw.delete(counter_key)


async def test_killed_holder_process_hands_over_within_its_lease(
    redis_url: str, namespace: str, connect: Connect, raw: aioredis.Redis
) -> None:
    """A SIGKILLed holder's lock reaches a waiter when its lease ends, not before."""
    lease_ttl = 2.0
    holder = spawn("hold", redis_url, namespace, "crash", lease_ttl)
    try:
        line = await read_line(holder)
        assert line.startswith("HELD "), line
        dead_token = int(line.split()[1])
        coord = connect(lease_ttl=lease_ttl)
        waiter = start(coord.acquire("crash", timeout=30))
        await until_waiting(coord, "crash", 1)
        h_key = lock_keys(namespace, "l:crash")[0].decode()
        ((_, expiry_ms),) = await raw.zrange(h_key, 0, -1, withscores=True)
        killed = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        lease = await asyncio.wait_for(waiter, 10)
        waited = time.monotonic() - killed
    finally:
        stop(holder)
    assert lease.token > dead_token
    # Safety: granted only after the dead holder's lease ran out (server clock, in µs).
    assert lease.token >= expiry_ms * 1000
    # Liveness: within lease_ttl plus one renewal interval (plus scheduling slack).
    assert waited <= lease_ttl + lease_ttl / 3 + 0.5, waited
    await lease.release()


async def test_killed_waiter_process_does_not_stall_the_queue(
    redis_url: str, namespace: str, connect: Connect
) -> None:
    """A waiter whose process died leaves the queue by itself; the next waiter is served."""
    coord = connect()
    holder = await coord.acquire("stall")
    dead = spawn("wait", redis_url, namespace, "stall", 1.0)
    try:
        await until_waiting(coord, "stall", 1)
        survivor = start(coord.acquire("stall", timeout=30))
        await until_waiting(coord, "stall", 2)
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        await holder.release()
        # The dead request is either reaped (deadline passed) or granted and its lease
        # expires unrenewed: either way the survivor gets the key.
        lease = await asyncio.wait_for(survivor, 15)
    finally:
        stop(dead)
    await lease.release()
    info = await coord.inspect("stall")
    assert info.holders == () and info.waiting == 0
