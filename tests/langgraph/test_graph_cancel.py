"""A guarded run cancelled by its caller (a client disconnect) leaves a usable thread."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from langchain_core.messages import ToolMessage
from langgraph.checkpoint.memory import InMemorySaver

from agentlocks import Coordinator
from agentlocks.langgraph import guard_graph
from agentlocks.langgraph._drain import INTERRUPTED_TOOL_CALL

from ._graphs import agent, dangling_tool_calls, user


def _config(thread: str) -> dict[str, dict[str, str]]:
    return {"configurable": {"thread_id": thread}}


@pytest.mark.parametrize("mode", ["ainvoke", "astream"])
async def test_run_cancelled_during_its_tool_call_leaves_no_dangling_call(
    coord: Coordinator, mode: str
) -> None:
    """Cancelled inside a tool: the call is closed before release, the next turn succeeds."""
    in_tool = asyncio.Event()
    raw = agent(
        InMemorySaver(), tool_delay=30, entered=lambda what: what == "tool" and in_tool.set()
    )
    graph = guard_graph(raw, coord)
    thread = f"t-{uuid.uuid4().hex[:8]}"

    async def first() -> None:
        if mode == "ainvoke":
            await graph.ainvoke(user(1), _config(thread))
        else:
            async for _ in graph.astream(user(1), _config(thread)):
                pass

    task = asyncio.create_task(first())
    await asyncio.wait_for(in_tool.wait(), 10)
    task.cancel()  # the client went away while the tool ran
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await asyncio.wait_for(graph.ainvoke(user(2), _config(thread)), 20)
    messages = result["messages"]
    assert not dangling_tool_calls(messages)
    closed = [
        m for m in messages if isinstance(m, ToolMessage) and m.content == INTERRUPTED_TOOL_CALL
    ]
    assert len(closed) == 1  # run 1's call, answered "interrupted", not run again
    assert messages[-1].content == "answer to msg-2"
    assert not (await coord.inspect(f"langgraph:{thread}")).held


async def test_closing_during_a_cancelled_runs_release_logs_no_failure(
    coord: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    """aclose() while a cancelled run is still being released ends it with no error logged."""
    in_tool = asyncio.Event()
    raw = agent(
        InMemorySaver(), tool_delay=30, entered=lambda what: what == "tool" and in_tool.set()
    )
    graph = guard_graph(raw, coord)
    task = asyncio.create_task(graph.ainvoke(user(1), _config(f"t-{uuid.uuid4().hex[:8]}")))
    await asyncio.wait_for(in_tool.wait(), 10)
    task.cancel()  # its release (after closing the tool call) goes on in the background
    with pytest.raises(asyncio.CancelledError):
        await task
    with caplog.at_level(logging.WARNING, logger="agentlocks"):
        await coord.aclose()  # the coordinator ends that lease itself: nobody to tell
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]
