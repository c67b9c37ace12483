"""guard_graph: the lost-update bug reproduced, then fixed, on every saver and backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver

from agentlocks import Coordinator
from agentlocks.langgraph import guard_graph
from tests.langgraph._graphs import agent, chat_graph, dangling_tool_calls, user

RUNS = 10
TEXTS = 8


def cfg(thread_id: str) -> dict[str, Any]:
    """The run config of ``thread_id``."""
    return {"configurable": {"thread_id": thread_id}}


async def messages_of(graph: Any, thread_id: str) -> list[BaseMessage]:
    """The thread's messages at its head checkpoint."""
    state = await graph.aget_state(cfg(thread_id))
    return list(state.values.get("messages", []))


async def double_texts(graph: Any, thread_id: str, count: int) -> list[Any]:
    """``count`` user messages on one thread, 30 ms apart; each run's result or error."""
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(graph.ainvoke(user(i), cfg(thread_id))))
        await asyncio.sleep(0.03)
    return await asyncio.gather(*tasks, return_exceptions=True)


def whole_turns(messages: list[BaseMessage], count: int) -> None:
    """Assert ``messages`` are ``count`` agent turns, each whole and none interleaved."""
    assert len(messages) == 4 * count, [m.content for m in messages]
    for i in range(count):
        human, ask, result, answer = messages[4 * i : 4 * i + 4]
        assert isinstance(human, HumanMessage) and human.content == f"msg-{i}"
        assert isinstance(ask, AIMessage) and ask.tool_calls[0]["id"] == f"call-human-{i}"
        assert isinstance(result, ToolMessage) and result.tool_call_id == f"call-human-{i}"
        assert isinstance(answer, AIMessage) and answer.content == f"answer to msg-{i}"
    assert dangling_tool_calls(messages) == []
    calls = [m.tool_call_id for m in messages if isinstance(m, ToolMessage)]
    assert len(calls) == len(set(calls)) == count  # every tool call answered exactly once


# -- the bug -----------------------------------------------------------------------------------


async def test_unguarded_concurrent_runs_lose_messages(saver: Any, thread_id: str) -> None:
    """Without agentlocks, 10 concurrent runs on one thread silently keep far fewer than 20."""
    graph = chat_graph(saver)
    await asyncio.gather(*(graph.ainvoke(user(i), cfg(thread_id)) for i in range(RUNS)))
    assert len(await messages_of(graph, thread_id)) < 2 * RUNS


async def test_unguarded_agent_double_texts_wedge_the_thread(thread_id: str) -> None:
    """Without agentlocks, double-texts lose turns, leave dangling tool calls, break later runs."""
    graph = agent(InMemorySaver())
    results = await double_texts(graph, thread_id, TEXTS)
    messages = await messages_of(graph, thread_id)
    humans = [m for m in messages if isinstance(m, HumanMessage)]
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(humans) < TEXTS  # turns silently lost
    # Runs that read a head whose tool call another run had not answered yet: their model
    # call refuses the history, as a provider would (HTTP 400).
    assert failed and all("INVALID_CHAT_HISTORY" in str(r) for r in failed)
    # Once a call dangles at the head, every later model call fails: the thread is wedged.
    if dangling_tool_calls(messages):
        with pytest.raises(ValueError, match="INVALID_CHAT_HISTORY"):
            await graph.ainvoke(user(99), cfg(thread_id))


# -- the fix -----------------------------------------------------------------------------------


async def test_guarded_concurrent_runs_keep_every_message(
    saver: Any, coord: Coordinator, thread_id: str
) -> None:
    """With guard_graph, 10 concurrent runs keep 20/20 messages, each reply after its message."""
    graph = guard_graph(chat_graph(saver), coord)
    await asyncio.gather(*(graph.ainvoke(user(i), cfg(thread_id)) for i in range(RUNS)))
    messages = await messages_of(graph, thread_id)
    assert len(messages) == 2 * RUNS
    for human, reply in zip(messages[::2], messages[1::2], strict=True):
        assert reply.content == f"reply to {human.content}"
    assert sorted(m.content for m in messages[::2]) == sorted(f"msg-{i}" for i in range(RUNS))
    assert not (await coord.inspect(f"langgraph:{thread_id}")).held


async def test_guarded_agent_double_texts_keep_whole_turns(
    coord: Coordinator, thread_id: str
) -> None:
    """With guard_graph, 8 double-texts 30 ms apart keep 8 whole turns; each gets its answer."""
    graph = guard_graph(agent(InMemorySaver()), coord)
    results = await double_texts(graph, thread_id, TEXTS)
    for i, result in enumerate(results):
        assert not isinstance(result, BaseException), result
        assert result["messages"][-1].content == f"answer to msg-{i}"
    whole_turns(await messages_of(graph, thread_id), TEXTS)
