"""Shared LangGraph helpers: the graphs the tests run and the savers they run them on.

* :func:`chat_graph`: appends the user's message and one reply (the issue's plain graph).
* :func:`agent`: the demo's real tool-calling agent (``agentlocks._demo._agent``),
  ``StateGraph`` + ``ToolNode`` driven by a scripted chat model (no network), which first
  calls the ``lookup`` tool, then answers. Its model node refuses a history with an
  unanswered tool call exactly as LangGraph's prebuilt agent does (``INVALID_CHAT_HISTORY``),
  the way providers answer 400. Model and tool delays are per graph, so a test can make a
  drain land while the model runs, or a tool outlast the drain timeout.
* :func:`open_saver`: the three LangGraph savers the issue names, by name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from agentlocks._demo._agent import build_agent
from agentlocks._demo._agent import dangling_tool_calls as dangling_tool_calls

SAVERS = ("memory", "sqlite", "postgres")

#: Seconds each model call and tool call takes: long enough for runs to overlap.
STEP_DELAY = 0.02


def user(i: int) -> dict[str, list[BaseMessage]]:
    """The input of turn ``i``: one user message ``"msg-<i>"``."""
    return {"messages": [HumanMessage(f"msg-{i}", id=f"human-{i}")]}


def chat_graph(checkpointer: BaseCheckpointSaver[Any] | None, delay: float = 0.01) -> Any:
    """A graph that appends one reply to each user message (2 messages per turn)."""

    async def reply(state: MessagesState) -> dict[str, list[BaseMessage]]:
        await asyncio.sleep(delay)
        last = state["messages"][-1]
        return {"messages": [AIMessage(f"reply to {last.content}", id=f"ai-{last.id}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    return builder.compile(checkpointer=checkpointer)


def agent(
    checkpointer: BaseCheckpointSaver[Any] | None,
    *,
    model_delay: float = STEP_DELAY,
    tool_delay: float = STEP_DELAY,
    entered: Callable[[str], None] | None = None,
) -> Any:
    """The demo's ReAct agent (model -> tools -> model), refusing an invalid chat history.

    ``tool_delay`` is the time the tool takes for turn 1 (``"msg-1"``); later turns' tool
    calls take STEP_DELAY, so a test of a slow first run does not wait for slow later ones.
    ``entered("model")`` / ``entered("tool")`` is called as each call begins.
    """
    return build_agent(
        checkpointer,
        think=model_delay,
        tool_delay=lambda query: tool_delay if query == "msg-1" else STEP_DELAY,
        entered=entered,
    )


@contextlib.asynccontextmanager
async def open_saver(name: str, tmp_path: Path, pg_url: str | None) -> AsyncIterator[Any]:
    """A fresh saver of kind ``name`` (``memory``, ``sqlite``, ``postgres``)."""
    if name == "memory":
        yield InMemorySaver()
    elif name == "sqlite":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "checkpoints.db")) as saver:
            yield saver
    elif name == "postgres":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        assert pg_url is not None
        async with AsyncPostgresSaver.from_conn_string(pg_url) as saver:
            await saver.setup()
            yield saver
    else:
        raise ValueError(f"unknown saver {name!r}")


class SlowSaver(InMemorySaver):
    """An InMemorySaver whose ``aput`` takes ``delay`` seconds: writes that are in flight."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def aput(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(self.delay)
        return await super().aput(*args, **kwargs)
