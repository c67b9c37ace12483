"""Two OS processes on one PostgreSQL checkpoint store, double-texting one thread."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from tests.conftest import backend_url_for
from tests.langgraph._graphs import chat_graph
from tests.langgraph.test_graph import messages_of

ROOT = Path(__file__).resolve().parents[2]
PER_PROCESS = 5


def spawn(*args: object) -> subprocess.Popen[str]:
    """Start ``python -m tests.langgraph._worker ARGS`` with pipes for stdin and stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.langgraph._worker", *map(str, args)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


async def read_line(process: subprocess.Popen[str]) -> str:
    """The next line the worker prints."""
    assert process.stdout is not None
    return (await asyncio.to_thread(process.stdout.readline)).strip()


async def two_processes(locking: str, coord_url: str, pg_url: str, thread_id: str) -> Counter[str]:
    """Run 2 x 5 concurrent turns on ``thread_id`` from two processes; count each message."""
    async with AsyncPostgresSaver.from_conn_string(pg_url) as saver:
        await saver.setup()  # once, here: the workers must not race on the migrations
    namespace = f"lgproc-{uuid.uuid4().hex[:10]}"
    workers = [
        spawn("runs", locking, coord_url, namespace, pg_url, thread_id, f"p{n}", PER_PROCESS)
        for n in range(2)
    ]
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
            if worker.poll() is None:
                worker.kill()
            worker.wait(10)
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert all(out.strip().endswith("DONE") for out, _ in outputs)
    async with AsyncPostgresSaver.from_conn_string(pg_url) as saver:
        messages = await messages_of(chat_graph(saver), thread_id)
    return Counter(str(m.content) for m in messages)


@pytest.mark.parametrize("backend", ["redis", "postgresql"])
async def test_two_processes_keep_every_message_exactly_once(backend: str, thread_id: str) -> None:
    """guard_graph across 2 processes (coordinator on Redis or PostgreSQL): 20/20, none twice."""
    coord_url = backend_url_for(backend)
    pg_url = backend_url_for("postgresql")
    counts = await two_processes("guard", coord_url, pg_url, thread_id)
    expected = {f"p{n}-{i}" for n in range(2) for i in range(PER_PROCESS)}
    expected |= {f"reply to {text}" for text in expected}
    assert counts == Counter(expected)


async def test_per_process_locks_lose_messages_across_processes(thread_id: str) -> None:
    """Without agentlocks (one asyncio.Lock per process), two replicas lose or repeat turns."""
    pg_url = backend_url_for("postgresql")
    counts = await two_processes("local", "memory://", pg_url, thread_id)
    assert sum(counts.values()) < 4 * PER_PROCESS or max(counts.values()) > 1
