"""guard_checkpointer across OS processes sharing one PostgreSQL saver."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from tests.conftest import backend_url_for
from tests.langgraph.checkpointer._graphs import chat_graph, messages

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[3]


def _spawn(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.langgraph.checkpointer._worker", *map(str, args)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "coord_backend",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgresql"),
    ],
)
async def test_two_processes_never_lose_a_turn_silently(coord_backend: str) -> None:
    """2 processes x 5 concurrent turns on one thread: every kept turn is a winner's, once."""
    pg_url = backend_url_for("postgresql")
    coord_url = backend_url_for(coord_backend)
    namespace, thread = f"proc-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    async with AsyncPostgresSaver.from_conn_string(pg_url) as saver:
        await saver.setup()
    workers = [_spawn("turns", coord_url, namespace, pg_url, thread, tag, 5) for tag in "ab"]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert (await asyncio.to_thread(worker.stdout.readline)).strip() == "READY"
        for worker in workers:  # start together, so that they race
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
    assert [worker.returncode for worker in workers] == [0, 0]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    won = [m for report in reports for m in report["won"]]
    lost = [name for report in reports for name in report["lost"]]
    assert won and lost, reports  # they did race
    assert set(lost) == {"ConcurrentRunError"}
    async with AsyncPostgresSaver.from_conn_string(pg_url) as saver:
        kept = await messages(chat_graph(saver), thread)
    assert sorted(kept) == sorted(m for w in won for m in (w, f"re:{w}"))
