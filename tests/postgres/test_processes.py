"""Several OS processes on one PostgreSQL: exclusion, fencing, and a holder killed by SIGKILL."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import random
import signal
import sys
import time
import uuid

import asyncpg
import pytest

import agentlocks
from tests.support.waiting import until_waiting

from .conftest import Connect

pytestmark = pytest.mark.postgres

PROCESSES = 4
TASKS = 25


async def _bump_counter(url: str, namespace: str, table: str) -> None:
    """One worker process: TASKS tasks doing read-sleep-write under one lock."""
    async with agentlocks.connect(url, namespace=namespace) as coord:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        try:

            async def once() -> None:
                async with coord.acquire("counter", timeout=60) as lease:
                    entered = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes
                    value = await pool.fetchval(f"SELECT n FROM {table} WHERE id = 0")
                    await asyncio.sleep(random.random() / 500)
                    await pool.execute(f"UPDATE {table} SET n = $1 WHERE id = 0", value + 1)
                    left = time.monotonic()
                    await pool.execute(
                        f"INSERT INTO {table} (id, n, entered, left_at) VALUES ($1, $2, $3, $4)",
                        lease.token, os.getpid(), entered, left,
                    )  # fmt: skip

            await asyncio.gather(*(once() for _ in range(TASKS)))
        finally:
            await pool.close()


def _worker(url: str, namespace: str, table: str) -> None:
    asyncio.run(_bump_counter(url, namespace, table))


async def test_processes_exclude_each_other_and_tokens_follow_grant_order(
    pg_url: str, admin: asyncpg.Connection
) -> None:
    """4 processes x 25 tasks: exact counter, no overlapping holds, tokens in grant order."""
    table = f"pgtest_counter_{uuid.uuid4().hex[:10]}"
    namespace = f"pgtest-{uuid.uuid4().hex[:12]}"
    await admin.execute(
        f"CREATE TABLE {table} (id bigint PRIMARY KEY, n bigint, entered float8, left_at float8)"
    )
    await admin.execute(f"INSERT INTO {table} (id, n) VALUES (0, 0)")
    try:
        context = multiprocessing.get_context("spawn")
        workers = [
            context.Process(target=_worker, args=(pg_url, namespace, table))
            for _ in range(PROCESSES)
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 50
        while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for worker in workers:
            if worker.is_alive():
                worker.kill()
            worker.join()
        assert [w.exitcode for w in workers] == [0] * PROCESSES
        assert await admin.fetchval(f"SELECT n FROM {table} WHERE id = 0") == PROCESSES * TASKS
        rows = await admin.fetch(
            f"SELECT id AS token, n AS pid, entered, left_at FROM {table}"
            " WHERE id <> 0 ORDER BY entered"
        )
        assert len(rows) == PROCESSES * TASKS
        assert len({row["pid"] for row in rows}) == PROCESSES
        tokens = [row["token"] for row in rows]
        assert tokens == sorted(tokens), "a later grant got a smaller token"
        for before, after in itertools.pairwise(rows):
            assert after["entered"] >= before["left_at"], "two holders overlapped"
    finally:
        await admin.execute(f"DROP TABLE {table}")


HOLDER = """
import asyncio, sys
import agentlocks

async def main() -> None:
    coord = agentlocks.connect(sys.argv[1], namespace=sys.argv[2])
    lease = await coord.acquire("crash")
    print(lease.token, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_holder_killed_by_sigkill_frees_the_lock_for_another_process(
    connect: Connect, pg_url: str
) -> None:
    """SIGKILL the holding process: the waiter here gets the lock once the server notices."""
    coord = connect()
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, pg_url, coord.namespace,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        holder_token = int(line)
        waiter = asyncio.create_task(_take(coord))
        await until_waiting(coord, "crash", 1)
        assert not waiter.done()
        killed = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        lease = await asyncio.wait_for(waiter, 20)  # bounded: the server notices the EOF
        delay = time.monotonic() - killed
        print(f"\nSIGKILLed holder -> lock granted here after {delay * 1000:.1f} ms")
        assert lease.token > holder_token
        await lease.release()
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


async def _take(coord: agentlocks.Coordinator) -> agentlocks.Lease:
    return await coord.acquire("crash")
