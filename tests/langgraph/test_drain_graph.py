"""Interrupting a real tool-calling agent: stop at a step boundary, keep a valid history."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import GraphDrained
from langgraph.runtime import RunControl

from agentlocks import Coordinator
from agentlocks.langgraph._drain import (
    INTERRUPTED_TOOL_CALL,
    DrainSignals,
    close_dangling_tool_calls,
    thread_key,
)

from ._drain_support import BACKEND_NAMES, coordinators
from ._graphs import agent, dangling_tool_calls, user
from ._interrupting import interrupting_run

Factory = Callable[[], Coordinator]


@pytest.fixture(params=BACKEND_NAMES)
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Coordinators on one backend and namespace (each one like another process)."""
    async with coordinators(request.param) as factory:
        yield factory


async def test_drain_between_model_and_tools_leaves_a_valid_history(make: Factory) -> None:
    """Run 1 stops after its model step; its tool call is closed; run 2 and run 3 succeed."""
    in_model = asyncio.Event()
    graph = agent(InMemorySaver(), model_delay=0.3, entered=lambda what: in_model.set())
    a, b = make(), make()
    thread = f"t-{uuid.uuid4().hex[:8]}"
    first = asyncio.create_task(
        interrupting_run(graph, a, DrainSignals(a), 1, thread, drain_timeout=5)
    )
    await in_model.wait()  # run 1 is inside its model call
    outcome2, result2 = await interrupting_run(
        graph, b, DrainSignals(b), 2, thread, drain_timeout=5
    )
    outcome1, _ = await first
    assert (outcome1, outcome2) == ("drained", "done")
    assert result2["messages"][-1].content == "answer to msg-2"
    messages = result2["messages"]
    # Run 1's model step was saved (its tool call is there), and closed, not run.
    assert [type(m).__name__ for m in messages] == [
        "HumanMessage", "AIMessage", "ToolMessage",  # run 1, stopped before its tools
        "HumanMessage", "AIMessage", "ToolMessage", "AIMessage",  # run 2's whole turn
    ]  # fmt: skip
    closed = messages[2]
    assert isinstance(closed, ToolMessage)
    assert closed.tool_call_id == "call-human-1"
    assert closed.content == INTERRUPTED_TOOL_CALL
    assert dangling_tool_calls(messages) == []
    state = await graph.aget_state({"configurable": {"thread_id": thread}})
    assert state.next == ()  # the pending tools task of run 1 will not run later
    # The next model call sees a valid history.
    outcome3, result3 = await interrupting_run(
        graph, a, DrainSignals(a), 3, thread, drain_timeout=5
    )
    assert outcome3 == "done"
    assert result3["messages"][-1].content == "answer to msg-3"
    assert dangling_tool_calls(result3["messages"]) == []


async def test_node_longer_than_the_drain_timeout_is_cancelled_after_it_not_before(
    make: Factory,
) -> None:
    """A tool still running at the drain timeout is cancelled then, not earlier; history valid."""
    in_tool = asyncio.Event()
    entered = lambda what: in_tool.set() if what == "tool" else None  # noqa: E731
    graph = agent(InMemorySaver(), tool_delay=5.0, entered=entered)
    a, b = make(), make()
    thread = f"t-{uuid.uuid4().hex[:8]}"
    drain_timeout = 0.5
    first = asyncio.create_task(
        interrupting_run(graph, a, DrainSignals(a), 1, thread, drain_timeout=9)
    )
    await in_tool.wait()  # run 1 is inside its 5 s tool call
    asked = time.monotonic()
    second = asyncio.create_task(
        interrupting_run(graph, b, DrainSignals(b), 2, thread, drain_timeout=drain_timeout)
    )
    outcome1, _ = await first
    ended = time.monotonic() - asked
    outcome2, result2 = await second
    assert (outcome1, outcome2) == ("cancelled", "done")
    assert drain_timeout <= ended < drain_timeout + 1.5
    messages = result2["messages"]
    assert dangling_tool_calls(messages) == []
    assert isinstance(messages[0], HumanMessage) and isinstance(messages[1], AIMessage)
    assert messages[2].content == INTERRUPTED_TOOL_CALL
    assert messages[-1].content == "answer to msg-2"


async def test_run_without_contention_is_not_drained(make: Factory) -> None:
    """Two runs one after the other (no overlap) both run their whole turn."""
    graph = agent(InMemorySaver())
    a, b = make(), make()
    thread = f"t-{uuid.uuid4().hex[:8]}"
    assert (await interrupting_run(graph, a, DrainSignals(a), 1, thread, drain_timeout=5))[0] == (
        "done"
    )
    outcome, result = await interrupting_run(graph, b, DrainSignals(b), 2, thread, drain_timeout=5)
    assert outcome == "done"
    assert len(result["messages"]) == 8
    assert dangling_tool_calls(result["messages"]) == []


async def test_close_dangling_tool_calls_is_a_no_op_on_a_valid_history() -> None:
    """Nothing dangles after a whole turn (or on a new thread): no checkpoint is written."""
    graph = agent(InMemorySaver())
    config: Any = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    await close_dangling_tool_calls(graph, config)  # a thread with no checkpoint yet
    assert (await graph.aget_state(config)).values == {}
    await graph.ainvoke(user(1), config)
    before = (await graph.aget_state(config)).config
    await close_dangling_tool_calls(graph, config)
    assert (await graph.aget_state(config)).config == before


async def test_drain_before_the_first_step_keeps_the_runs_input(make: Factory) -> None:
    """A request already waiting when run 1 starts drains it at once; its message survives."""
    graph = agent(InMemorySaver())
    a, b = make(), make()
    thread = f"t-{uuid.uuid4().hex[:8]}"
    config: Any = {"configurable": {"thread_id": thread}}
    lease = await a.acquire(thread_key(thread))
    await DrainSignals(b).request_drain(thread)  # sent before run 1 began watching
    control = RunControl()
    try:
        async with DrainSignals(a).watch(thread, control, lambda: None, lease=lease):
            with pytest.raises(GraphDrained):
                await graph.ainvoke(user(1), config, control=control)
        assert (await graph.aget_state(config)).next == ("__start__",)  # input not applied
        await close_dangling_tool_calls(graph, config)
    finally:
        await lease.release()
    result = await graph.ainvoke(user(2), config)
    assert [m.content for m in result["messages"]][:2] == ["msg-1", "msg-2"]
    assert result["messages"][-1].content == "answer to msg-2"
    assert dangling_tool_calls(result["messages"]) == []
