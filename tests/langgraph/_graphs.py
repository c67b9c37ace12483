"""Shared LangGraph fixtures: the graphs and the scripted chat model the tests run.

* :func:`chat_graph`: appends the user's message and one reply (the issue's plain graph).
* :func:`agent_graph`: a real tool-calling agent, ``StateGraph`` + ``ToolNode``, driven by
  :class:`ScriptedChatModel` (no network), which first calls the ``lookup`` tool, then
  answers. Its model node refuses a history with an unanswered tool call exactly as
  LangGraph's prebuilt agent does (``INVALID_CHAT_HISTORY``), the way providers answer 400.
* :func:`savers`: the three LangGraph savers the issue names, by name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import ErrorCode, create_error_message
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

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


@tool
async def lookup(query: str) -> str:
    """Look ``query`` up (scripted)."""
    await asyncio.sleep(STEP_DELAY)
    return f"result for {query}"


def dangling_tool_calls(messages: Sequence[BaseMessage]) -> list[str]:
    """Ids of tool calls in ``messages`` that no ``ToolMessage`` answers."""
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    return [
        call["id"] or ""
        for m in messages
        if isinstance(m, AIMessage)
        for call in m.tool_calls
        if call["id"] not in answered
    ]


class ScriptedChatModel(BaseChatModel):
    """Calls ``lookup`` for the latest user message, then answers it once the tool replied."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        return self

    def _next(self, messages: list[BaseMessage]) -> AIMessage:
        last = messages[-1]
        human = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
        if isinstance(last, ToolMessage):
            return AIMessage(f"answer to {human.content}", id=f"answer-{human.id}")
        call = {"name": "lookup", "args": {"query": str(human.content)}, "id": f"call-{human.id}"}
        return AIMessage("", tool_calls=[call], id=f"ask-{human.id}")

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        await asyncio.sleep(STEP_DELAY)
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])


def agent_graph(checkpointer: BaseCheckpointSaver[Any] | None) -> Any:
    """A ReAct agent: model -> tools -> model, with LangGraph's own chat-history check."""
    model = ScriptedChatModel().bind_tools([lookup])

    async def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        dangling = dangling_tool_calls(state["messages"])
        if dangling:
            raise ValueError(
                create_error_message(
                    message="Found AIMessages with tool_calls that do not have a "
                    f"corresponding ToolMessage: {dangling}",
                    error_code=ErrorCode.INVALID_CHAT_HISTORY,
                )
            )
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", call_model)
    builder.add_node("tools", ToolNode([lookup]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer)


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
