"""guard_graph(on_busy="interrupt") end to end: two guarded graphs, one thread, any backend."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import GraphDrained

from agentlocks import Coordinator
from agentlocks.langgraph import guard_graph
from agentlocks.langgraph._drain import INTERRUPTED_TOOL_CALL

from ._drain_support import BACKEND_NAMES, coordinators
from ._graphs import agent, dangling_tool_calls, user

Factory = Callable[[], Coordinator]


@pytest.fixture(params=BACKEND_NAMES)
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Coordinators on one backend and namespace (each one like another process)."""
    async with coordinators(request.param) as factory:
        yield factory


async def test_guarded_interrupt_drains_at_the_boundary_and_keeps_history_valid(
    make: Factory,
) -> None:
    """Run 1 raises GraphDrained after its model step; run 2 and a third run answer."""
    saver = InMemorySaver()
    a, b = make(), make()
    in_model = asyncio.Event()
    slow = agent(saver, model_delay=0.4, entered=lambda what: in_model.set())
    first = guard_graph(slow, a, on_busy="interrupt", drain_timeout=5)
    second = guard_graph(agent(saver), b, on_busy="interrupt", drain_timeout=5)
    config: Any = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    run1 = asyncio.create_task(first.ainvoke(user(1), config))
    await in_model.wait()  # run 1 is inside its model call (0.4 s)
    result2 = await second.ainvoke(user(2), config)
    with pytest.raises(GraphDrained):
        await run1
    messages = result2["messages"]
    assert [m.content for m in messages[:3]] == ["msg-1", "", INTERRUPTED_TOOL_CALL]
    assert messages[-1].content == "answer to msg-2"
    assert dangling_tool_calls(messages) == []
    result3 = await first.ainvoke(user(3), config)
    assert result3["messages"][-1].content == "answer to msg-3"
    assert dangling_tool_calls(result3["messages"]) == []


async def test_guarded_interrupt_cancels_a_slow_node_after_the_drain_timeout(
    make: Factory,
) -> None:
    """A tool outlasting drain_timeout is cancelled then, not before; run 2 answers."""
    saver = InMemorySaver()
    a, b = make(), make()
    in_tool = asyncio.Event()
    entered = lambda what: in_tool.set() if what == "tool" else None  # noqa: E731
    first = guard_graph(
        agent(saver, tool_delay=5.0, entered=entered), a, on_busy="interrupt", drain_timeout=9
    )
    second = guard_graph(agent(saver), b, on_busy="interrupt", drain_timeout=0.5)
    config: Any = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    run1 = asyncio.create_task(first.ainvoke(user(1), config))
    await in_tool.wait()  # run 1 is inside its 5 s tool call
    asked = time.monotonic()
    run2 = asyncio.create_task(second.ainvoke(user(2), config))
    with pytest.raises(GraphDrained):
        await run1
    ended = time.monotonic() - asked
    result2 = await run2
    assert 0.5 <= ended < 2.0
    messages = result2["messages"]
    assert [m.content for m in messages[:3]] == ["msg-1", "", INTERRUPTED_TOOL_CALL]
    assert messages[-1].content == "answer to msg-2"
    assert dangling_tool_calls(messages) == []
