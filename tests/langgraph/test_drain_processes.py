"""Interrupt across two OS processes: the run in the other process drains (or is cancelled)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

import agentlocks
from agentlocks.langgraph import guard_graph
from agentlocks.langgraph._drain import INTERRUPTED_TOOL_CALL, DrainSignals
from tests.conftest import backend_url_for

from ._graphs import agent, dangling_tool_calls, user
from ._interrupting import interrupting_run


def spawn(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m tests.langgraph._drain_worker ARGS`` with its stdout piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.langgraph._drain_worker", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


async def line_of(worker: subprocess.Popen[str]) -> str:
    """The next line the worker prints."""
    assert worker.stdout is not None
    return (await asyncio.to_thread(worker.stdout.readline)).strip()


@pytest.mark.parametrize("style", ["own", "guard"])
@pytest.mark.parametrize("lock_backend", ["redis", "postgresql"])
@pytest.mark.parametrize(
    ("scenario", "model_delay", "tool_delay", "drain_timeout", "expected"),
    [("drain", 1.0, 0.02, 10.0, "drained"), ("cancel", 0.02, 6.0, 0.5, "cancelled")],
)
async def test_a_run_in_another_process_makes_way(
    style: str,
    lock_backend: str,
    scenario: str,
    model_delay: float,
    tool_delay: float,
    drain_timeout: float,
    expected: str,
) -> None:
    """Turn 1 runs in a worker process; turn 2 here interrupts it, then runs its whole turn."""
    # ``style``: both sides use the tests' own minimal guard, or ``guard_graph``.
    lock_url = backend_url_for(lock_backend)
    pg_url = backend_url_for("postgresql")
    namespace = f"drainp-{uuid.uuid4().hex[:12]}"
    thread = f"t-{uuid.uuid4().hex[:8]}"
    async with AsyncPostgresSaver.from_conn_string(pg_url) as saver:
        await saver.setup()  # once, before two processes use the tables
        worker = spawn(
            style, lock_url, pg_url, namespace, thread, "1", str(model_delay), str(tool_delay),
            "30",
        )  # fmt: skip
        try:
            busy = "IN_TOOL" if scenario == "cancel" else "IN_MODEL"
            assert await asyncio.wait_for(line_of(worker), 30) == busy
            async with agentlocks.connect(lock_url, namespace=namespace) as coord:
                graph = agent(saver)
                asked = time.monotonic()
                if style == "own":
                    outcome, result = await interrupting_run(
                        graph, coord, DrainSignals(coord), 2, thread, drain_timeout=drain_timeout
                    )
                else:
                    guarded = guard_graph(
                        graph, coord, on_busy="interrupt", drain_timeout=drain_timeout
                    )
                    config: Any = {"configurable": {"thread_id": thread}}
                    outcome, result = "done", await guarded.ainvoke(user(2), config)
                waited = time.monotonic() - asked
            report: dict[str, Any] = json.loads(await asyncio.wait_for(line_of(worker), 30))
            assert worker.wait(30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            assert worker.stdout is not None
            worker.stdout.close()
    assert (report["outcome"], outcome) == (expected, "done")
    if scenario == "cancel":
        assert waited >= drain_timeout  # never cut short before the drain timeout
    messages = result["messages"]
    assert [m.content for m in messages[:3]] == ["msg-1", "", INTERRUPTED_TOOL_CALL]
    assert messages[-1].content == "answer to msg-2"
    assert dangling_tool_calls(messages) == []
