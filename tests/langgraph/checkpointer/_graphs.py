"""Small graphs the LangGraph tests run (no model: the race is in the checkpoints)."""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph


class Chat(TypedDict):
    """A conversation: every run appends a user message and a reply."""

    messages: Annotated[list[str], operator.add]


async def _reply(state: Chat) -> dict[str, list[str]]:
    await asyncio.sleep(0.02)  # long enough for every concurrent run to read the same head
    return {"messages": [f"re:{state['messages'][-1]}"]}


def chat_graph(saver: Any) -> Any:
    """``START -> reply -> END``, compiled with ``saver``."""
    builder = StateGraph(Chat)
    builder.add_node("reply", _reply)
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    return builder.compile(checkpointer=saver)


def config(thread_id: str, **configurable: Any) -> dict[str, Any]:
    """A run config for ``thread_id``."""
    return {"configurable": {"thread_id": thread_id, **configurable}}


async def concurrent_turns(graph: Any, thread_id: str, n: int, **kwargs: Any) -> list[Any]:
    """Run ``n`` turns on one thread at once; return each result or exception, in order."""
    return await asyncio.gather(
        *(graph.ainvoke({"messages": [f"u{i}"]}, config(thread_id), **kwargs) for i in range(n)),
        return_exceptions=True,
    )


async def messages(graph: Any, thread_id: str) -> list[str]:
    """The thread's messages as its head checkpoint has them."""
    state = await graph.aget_state(config(thread_id))
    return list(state.values.get("messages", []))
