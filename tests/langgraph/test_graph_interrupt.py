"""on_busy="interrupt", guard_graph's side: drain, then cancel, then close dangling calls.

The cross-process drain signals live in ``agentlocks.langgraph._drain`` (their own tests);
here an in-process stand-in with the same interface is put in their place, to check what
guard_graph does with them: when it asks, what the drained run raises, what it leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import GraphDrained
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.runtime import RunControl

from agentlocks import Coordinator
from agentlocks.langgraph import _holding, guard_graph
from tests.langgraph._graphs import agent, dangling_tool_calls, user
from tests.langgraph.test_graph import cfg, messages_of
from tests.langgraph.test_graph_behaviour import until_held


class LocalSignals:
    """In-process stand-in for ``_drain.DrainSignals`` (same interface, no backend)."""

    def __init__(self) -> None:
        self.watching: dict[str, tuple[RunControl, Callable[[], None]]] = {}
        self.requests: list[tuple[str, str]] = []

    @contextlib.asynccontextmanager
    async def watch(
        self,
        thread_id: str,
        control: RunControl,
        cancel: Callable[[], None],
        *,
        lease: object = None,
    ) -> AsyncIterator[None]:
        self.watching[thread_id] = (control, cancel)
        try:
            yield
        finally:
            self.watching.pop(thread_id, None)

    async def request_drain(self, thread_id: str) -> None:
        self.requests.append(("drain", thread_id))
        if thread_id in self.watching:
            self.watching[thread_id][0].request_drain()

    async def request_cancel(self, thread_id: str) -> None:
        self.requests.append(("cancel", thread_id))
        if thread_id in self.watching:
            self.watching[thread_id][1]()

    async def aclose(self) -> None:
        self.watching.clear()


async def close_dangling_tool_calls(graph: Any, config: Any) -> None:
    """Stand-in for ``_drain.close_dangling_tool_calls``: answer each open call."""
    messages = (await graph.aget_state(config)).values.get("messages", [])
    closing = [
        ToolMessage("interrupted by a newer message", tool_call_id=call_id)
        for call_id in dangling_tool_calls(messages)
    ]
    if closing:
        await graph.aupdate_state(config, {"messages": closing}, as_node="agent")


@pytest.fixture
def signals(monkeypatch: pytest.MonkeyPatch) -> LocalSignals:
    """The stand-in signals, and the stand-in close_dangling_tool_calls wired in."""
    fake = types.SimpleNamespace(close_dangling_tool_calls=close_dangling_tool_calls)
    monkeypatch.setattr(_holding, "drain_module", lambda: fake)
    return LocalSignals()


def interrupting(graph: Any, coord: Coordinator, signals: LocalSignals, **options: Any) -> Any:
    """``guard_graph(graph, coord, on_busy="interrupt")`` listening to ``signals``."""
    guarded = guard_graph(graph, coord, on_busy="interrupt", **options)
    guarded._agentlocks_guard._signals = signals
    return guarded


async def test_interrupt_drains_at_a_boundary_and_closes_dangling_calls(
    memory_coord: Coordinator, thread_id: str, signals: LocalSignals
) -> None:
    """The running run drains at a boundary, its tool call closed; the newer run runs whole."""
    graph = interrupting(agent(InMemorySaver()), memory_coord, signals)
    first = asyncio.create_task(graph.ainvoke(user(0), cfg(thread_id)))
    await until_held(memory_coord, thread_id)
    await asyncio.sleep(0.005)  # inside the model call; it finishes, then the run drains
    second = await graph.ainvoke(user(1), cfg(thread_id))
    with pytest.raises(GraphDrained, match="interrupted by a newer run"):
        await first
    assert signals.requests == [("drain", thread_id)]
    assert second["messages"][-1].content == "answer to msg-1"
    messages = await messages_of(graph, thread_id)
    assert dangling_tool_calls(messages) == []
    assert [m.content for m in messages][:3] == ["msg-0", "", "interrupted by a newer message"]
    third = await graph.ainvoke(user(2), cfg(thread_id))
    assert third["messages"][-1].content == "answer to msg-2"


async def test_interrupt_cancels_a_run_past_drain_timeout(
    memory_coord: Coordinator, thread_id: str, signals: LocalSignals
) -> None:
    """A node that does not finish within drain_timeout is cancelled; the run ends drained."""
    started = asyncio.Event()

    async def slow(state: MessagesState) -> dict[str, list[BaseMessage]]:
        started.set()
        await asyncio.sleep(30)
        return {"messages": [AIMessage("too late")]}

    builder = StateGraph(MessagesState)
    builder.add_node("slow", slow)
    builder.add_edge(START, "slow")
    graph = interrupting(
        builder.compile(checkpointer=InMemorySaver()), memory_coord, signals, drain_timeout=0.2
    )
    first = asyncio.create_task(graph.ainvoke(user(0), cfg(thread_id)))
    await started.wait()
    started.clear()
    second = asyncio.create_task(graph.ainvoke(user(1), cfg(thread_id)))
    with pytest.raises(GraphDrained, match="cancelled after drain_timeout"):
        await first
    await started.wait()  # the newer run holds the thread and runs its node
    assert signals.requests == [("drain", thread_id), ("cancel", thread_id)]
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second


async def test_interrupt_reaches_the_callers_own_control(
    memory_coord: Coordinator, thread_id: str, signals: LocalSignals
) -> None:
    """A RunControl the caller passed is the one drained (not replaced by another)."""
    graph = interrupting(agent(InMemorySaver()), memory_coord, signals)
    mine = RunControl()
    first = asyncio.create_task(graph.ainvoke(user(0), cfg(thread_id), control=mine))
    await until_held(memory_coord, thread_id)
    await graph.ainvoke(user(1), cfg(thread_id))
    with pytest.raises(GraphDrained):
        await first
    assert mine.drain_requested
