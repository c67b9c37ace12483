"""What must keep working under guard_checkpointer: interrupts, edits, time travel, subgraphs."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from agentlocks import ConcurrentRunError, Coordinator
from agentlocks.langgraph._checkpointer import guard_checkpointer
from tests.langgraph.checkpointer._graphs import chat_graph, concurrent_turns, config, messages
from tests.langgraph.checkpointer.conftest import MakeSaver


class Chat(TypedDict):
    messages: Annotated[list[str], operator.add]


def _ask_graph(saver: Any) -> Any:
    """START -> ask (interrupts for a human answer) -> END."""

    def ask(state: Chat) -> dict[str, list[str]]:
        answer = interrupt("approve?")
        return {"messages": [f"human:{answer}"]}

    builder = StateGraph(Chat)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    return builder.compile(checkpointer=saver)


def _nested_graph(saver: Any, *, ask: bool = False) -> Any:
    """A parent whose node is a subgraph (its own checkpoint namespace); optionally asking."""

    def inner_reply(state: Chat) -> dict[str, list[str]]:
        if ask:
            return {"messages": [f"sub:{interrupt('sub?')}"]}
        return {"messages": [f"sub:{state['messages'][-1]}"]}

    sub_builder = StateGraph(Chat)
    sub_builder.add_node("inner_reply", inner_reply)
    sub_builder.add_edge(START, "inner_reply")
    sub_builder.add_edge("inner_reply", END)
    sub = sub_builder.compile()  # checkpoints through the parent's saver, in its own ns

    async def child(state: Chat) -> dict[str, list[str]]:
        out = await sub.ainvoke({"messages": state["messages"][-1:]})
        return {"messages": out["messages"][1:]}

    builder = StateGraph(Chat)
    builder.add_node("child", child)
    builder.add_edge(START, "child")
    builder.add_edge("child", END)
    return builder.compile(checkpointer=saver)


async def test_interrupt_and_resume(coord: Coordinator, thread_id: str) -> None:
    """interrupt() then Command(resume=...) completes the turn under the guard."""
    graph = _ask_graph(guard_checkpointer(InMemorySaver(), coord))
    first = await graph.ainvoke({"messages": ["u"]}, config(thread_id))
    assert first["__interrupt__"][0].value == "approve?"
    done = await graph.ainvoke(Command(resume="yes"), config(thread_id))
    assert done["messages"] == ["u", "human:yes"]
    # And again, on the same thread.
    await graph.ainvoke({"messages": ["u2"]}, config(thread_id))
    done = await graph.ainvoke(Command(resume="no"), config(thread_id))
    assert done["messages"] == ["u", "human:yes", "u2", "human:no"]


async def test_update_state_latest_and_old(
    coord: Coordinator, thread_id: str, make_saver: MakeSaver, saver_kind: str
) -> None:
    """update_state on the head, then on an old checkpoint (a fork); the thread goes on."""
    async with make_saver(saver_kind) as inner:
        await _update_state_latest_and_old(chat_graph(guard_checkpointer(inner, coord)), thread_id)


async def _update_state_latest_and_old(graph: Any, thread_id: str) -> None:
    await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    await graph.aupdate_state(config(thread_id), {"messages": ["edit"]})
    assert await messages(graph, thread_id) == ["a", "re:a", "edit"]
    await graph.ainvoke({"messages": ["b"]}, config(thread_id))
    history = [s async for s in graph.aget_state_history(config(thread_id))]
    old = next(s for s in history if s.values.get("messages") == ["a", "re:a"])
    await graph.aupdate_state(old.config, {"messages": ["forked"]})
    assert await messages(graph, thread_id) == ["a", "re:a", "forked"]
    await graph.ainvoke({"messages": ["c"]}, config(thread_id))
    assert await messages(graph, thread_id) == ["a", "re:a", "forked", "c", "re:c"]


async def test_time_travel_from_an_old_checkpoint(
    coord: Coordinator, thread_id: str, make_saver: MakeSaver, saver_kind: str
) -> None:
    """Invoking from an old checkpoint_id forks the thread there; later turns continue."""
    async with make_saver(saver_kind) as inner:
        await _time_travel(chat_graph(guard_checkpointer(inner, coord)), thread_id)


async def _time_travel(graph: Any, thread_id: str) -> None:
    await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    await graph.ainvoke({"messages": ["b"]}, config(thread_id))
    history = [s async for s in graph.aget_state_history(config(thread_id))]
    old = next(s for s in history if s.values.get("messages") == ["a", "re:a"])
    await graph.ainvoke({"messages": ["x"]}, old.config)
    assert await messages(graph, thread_id) == ["a", "re:a", "x", "re:x"]
    await graph.ainvoke({"messages": ["y"]}, config(thread_id))
    assert await messages(graph, thread_id) == ["a", "re:a", "x", "re:x", "y", "re:y"]


async def test_subgraphs(coord: Coordinator, thread_id: str) -> None:
    """A subgraph's own checkpoint chain passes; double-texts through it are still refused."""
    graph = _nested_graph(guard_checkpointer(InMemorySaver(), coord))
    await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    await graph.ainvoke({"messages": ["b"]}, config(thread_id))
    assert await messages(graph, thread_id) == ["a", "sub:a", "b", "sub:b"]
    results = await concurrent_turns(graph, thread_id, 6)
    losers = [r for r in results if isinstance(r, BaseException)]
    assert losers and all(isinstance(r, ConcurrentRunError) for r in losers)
    winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
    kept = (await messages(graph, thread_id))[4:]
    assert sorted(kept) == sorted(m for i in winners for m in (f"u{i}", f"sub:u{i}"))


async def test_interrupt_inside_a_subgraph(coord: Coordinator, thread_id: str) -> None:
    """An interrupt raised in a subgraph resumes through the parent under the guard."""
    graph = _nested_graph(guard_checkpointer(InMemorySaver(), coord), ask=True)
    first = await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    assert first["__interrupt__"][0].value == "sub?"
    done = await graph.ainvoke(Command(resume="ok"), config(thread_id))
    assert done["messages"] == ["a", "sub:ok"]


async def test_parentless_write_onto_an_existing_thread_is_a_fork(
    coord: Coordinator, thread_id: str
) -> None:
    """A saver user writing a fresh root checkpoint onto a tracked thread is not refused."""
    from langgraph.checkpoint.base import empty_checkpoint

    saver = guard_checkpointer(InMemorySaver(), coord)
    graph = chat_graph(saver)
    await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    root = empty_checkpoint()
    stored = await saver.aput(config(thread_id, checkpoint_ns=""), root, {"step": -1}, {})
    assert stored["configurable"]["checkpoint_id"] == root["id"]
    await graph.ainvoke({"messages": ["b"]}, config(thread_id))
    assert await messages(graph, thread_id) == ["b", "re:b"]


async def test_deleted_thread_starts_again(coord: Coordinator, thread_id: str) -> None:
    """After adelete_thread, the thread's next runs are accepted (its head record went too)."""
    saver = guard_checkpointer(InMemorySaver(), coord)
    graph = chat_graph(saver)
    await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    await saver.adelete_thread(thread_id)
    await graph.ainvoke({"messages": ["b"]}, config(thread_id))
    assert await messages(graph, thread_id) == ["b", "re:b"]
