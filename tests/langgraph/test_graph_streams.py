"""Streams keep the thread's lock until they end, are closed, aborted or cancelled."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import anyio
import pytest
from langchain_core._api.beta_decorator import LangChainBetaWarning
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph

from agentlocks import Coordinator
from agentlocks.langgraph import guard_graph
from tests.langgraph._graphs import SlowSaver, agent, chat_graph, user
from tests.langgraph.test_graph import cfg, messages_of
from tests.langgraph.test_graph_behaviour import is_held, until_held


def guarded_agent(coord: Coordinator) -> Any:
    """The tool-calling agent (several steps, so a stream has chunks to stop between)."""
    return guard_graph(agent(InMemorySaver()), coord)


async def test_astream_holds_until_exhausted_or_closed(coord: Coordinator, thread_id: str) -> None:
    """astream holds the lock between chunks; exhaustion and aclose() free it; unstarted: none."""
    graph = guarded_agent(coord)
    never = graph.astream(user(0), cfg(thread_id))
    assert not await is_held(coord, thread_id)
    await never.aclose()
    stream = graph.astream(user(1), cfg(thread_id), stream_mode="updates")
    await anext(stream)
    assert await is_held(coord, thread_id)
    await stream.aclose()
    assert not await is_held(coord, thread_id)
    # (The closed run stopped after the model asked for a tool: that thread now has a
    # dangling tool call, as it would unguarded. The next run uses a fresh thread.)
    other = f"{thread_id}-2"
    chunks = [chunk async for chunk in graph.astream(user(2), cfg(other))]
    assert chunks and not await is_held(coord, other)


async def test_cancelled_stream_frees_after_loop_flushed(
    coord: Coordinator, thread_id: str
) -> None:
    """A consumer cancelled mid-run frees the lock once LangGraph's exit task is done."""
    graph = guard_graph(chat_graph(InMemorySaver(), delay=0.5), coord)

    async def consume() -> None:
        async for _ in graph.astream(user(0), cfg(thread_id)):
            pass

    task = asyncio.create_task(consume())
    await until_held(coord, thread_id)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until_held(coord, thread_id, held=False)
    # The thread is usable: the next run keeps its whole turn after the input checkpoint.
    await graph.ainvoke(user(1), cfg(thread_id))
    assert [m.content for m in await messages_of(graph, thread_id)][-2:] == [
        "msg-1",
        "reply to msg-1",
    ]


async def test_astream_events_v2_holds_until_closed(coord: Coordinator, thread_id: str) -> None:
    """astream_events (v2) holds the lock while events flow and frees it when closed early."""
    graph = guarded_agent(coord)
    events = graph.astream_events(user(0), cfg(thread_id), version="v2")
    async for event in events:
        if event["event"] == "on_chat_model_end":
            assert await is_held(coord, thread_id)
            break
    await events.aclose()
    await until_held(coord, thread_id, held=False)
    other = f"{thread_id}-2"
    names = [e["event"] async for e in graph.astream_events(user(1), cfg(other))]
    assert "on_chain_end" in names and not await is_held(coord, other)


@pytest.mark.filterwarnings("ignore:astream_events version='v1' is deprecated")
async def test_astream_events_v1_holds_until_closed(
    memory_coord: Coordinator, thread_id: str
) -> None:
    """astream_events (v1, deprecated upstream) holds the lock too, until closed."""
    graph = guarded_agent(memory_coord)
    events = graph.astream_events(user(0), cfg(thread_id), version="v1")
    async for event in events:
        if event["event"] == "on_chat_model_end":
            assert await is_held(memory_coord, thread_id)
            break
    await events.aclose()
    await until_held(memory_coord, thread_id, held=False)


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
async def test_astream_events_v3_frees_on_abort_and_output(
    coord: Coordinator, thread_id: str
) -> None:
    """The v3 stream object: abort() before or during the run, or output(), frees the lock."""
    assert LangChainBetaWarning  # the v3 protocol is experimental upstream
    graph = guarded_agent(coord)
    run = await graph.astream_events(user(0), cfg(thread_id), version="v3")
    await run.abort()
    assert not await is_held(coord, thread_id)
    run = await graph.astream_events(user(1), cfg(thread_id), version="v3")
    events = aiter(run)
    await anext(events)
    assert await is_held(coord, thread_id)
    await run.abort()
    await until_held(coord, thread_id, held=False)
    other = f"{thread_id}-2"
    run = await graph.astream_events(user(2), cfg(other), version="v3")
    output = await run.output()
    assert output is not None and output["messages"][-1].content == "answer to msg-2"
    assert not await is_held(coord, other)


async def test_stream_with_frees_however_it_ends(coord: Coordinator, thread_id: str) -> None:
    """stream_with's body frees the lease when exhausted, closed, or dropped (started or not)."""
    graph = guarded_agent(coord)
    body = graph.stream_with(await graph.acquire_thread(thread_id), user(0), cfg(thread_id))
    assert await is_held(coord, thread_id)
    await body.aclose()  # never iterated
    assert not await is_held(coord, thread_id)

    body = graph.stream_with(await graph.acquire_thread(thread_id), user(1), cfg(thread_id))
    del body  # dropped without a close: the finaliser gives the lease back
    gc.collect()
    await until_held(coord, thread_id, held=False)

    # Left suspended mid-stream and dropped (what Starlette does on ASGI >= 2.4 servers).
    other = f"{thread_id}-2"
    body = graph.stream_with(await graph.acquire_thread(other), user(9), cfg(other))
    await anext(body)
    assert await is_held(coord, other)
    del body
    gc.collect()
    await until_held(coord, other, held=False)

    lease = await graph.acquire_thread(thread_id)
    body = graph.stream_with(lease, user(2), cfg(thread_id), stream_mode="updates")
    lines = [line async for line in body]
    assert all(isinstance(line, str) and line.endswith("\n") for line in lines)
    assert "answer to msg-2" in json.dumps([json.loads(line) for line in lines])
    assert not await is_held(coord, thread_id)
    # Only the completed run left messages: the two unstarted bodies ran nothing.
    assert (await messages_of(graph, thread_id))[0].content == "msg-2"


async def test_stream_with_frees_on_failure(memory_coord: Coordinator, thread_id: str) -> None:
    """A run that fails inside stream_with frees the lease and raises the run's error."""

    async def fail(state: MessagesState) -> dict[str, Any]:
        raise RuntimeError("node failed")

    builder = StateGraph(MessagesState)
    builder.add_node("fail", fail)
    builder.add_edge(START, "fail")
    graph = guard_graph(builder.compile(checkpointer=InMemorySaver()), memory_coord)
    lease = await graph.acquire_thread(thread_id)
    body = graph.stream_with(lease, user(0), cfg(thread_id))
    with pytest.raises(RuntimeError, match="node failed"):
        async for _ in body:
            pass
    assert not await is_held(memory_coord, thread_id)


async def test_cancelled_run_frees_only_after_its_writes(
    memory_coord: Coordinator, thread_id: str
) -> None:
    """A run cancelled by a scope mid-write frees the lock after the write; the next run sees it."""
    graph = guard_graph(chat_graph(SlowSaver(0.2), delay=1.0), memory_coord)
    scope = anyio.CancelScope()

    async def first_run() -> None:
        with scope:  # re-cancels every await of the run's cleanup, as a task group would
            await graph.ainvoke(user(0), cfg(thread_id))

    first = asyncio.create_task(first_run())
    await until_held(memory_coord, thread_id)
    await asyncio.sleep(0.05)  # the input checkpoint's aput is under way
    scope.cancel()
    second = asyncio.create_task(graph.ainvoke(user(1), cfg(thread_id)))
    await asyncio.gather(first, second)
    contents = [m.content for m in await messages_of(graph, thread_id)]
    assert contents == ["msg-0", "msg-1", "reply to msg-1"]
