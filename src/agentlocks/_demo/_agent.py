"""The demo's agent: a real LangGraph tool-calling graph whose "thinking" is a scripted delay.

``StateGraph`` + ``ToolNode``: the model asks for the ``lookup`` tool for the latest user
message, the tool answers, the model answers the user. :class:`ScriptedChatModel` is a real
``BaseChatModel`` (no LLM, no network) that sleeps ``think`` seconds per call. The model node
refuses a history holding an unanswered tool call with LangGraph's ``INVALID_CHAT_HISTORY``
error, exactly as LangGraph's prebuilt agent does (and as providers answer 400): a thread whose
checkpoint lost a ``ToolMessage`` is wedged.

The test suite runs this same agent (``tests/langgraph/_graphs.py``): ``tool_delay`` may
depend on the query and ``entered`` reports each model and tool call as it begins, so a test
can time a drain or a cancel against them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import StructuredTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import ErrorCode, create_error_message
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

__all__ = ["ScriptedChatModel", "build_agent", "dangling_tool_calls"]


def dangling_tool_calls(messages: Sequence[BaseMessage]) -> list[str]:
    """Ids of the tool calls in ``messages`` that no ``ToolMessage`` answers."""
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    return [
        str(call["id"])
        for m in messages
        if isinstance(m, AIMessage)
        for call in m.tool_calls
        if call["id"] not in answered
    ]


class ScriptedChatModel(BaseChatModel):
    """Asks for ``lookup`` on the latest user message, then answers once the tool replied."""

    think: float = 0.1
    """Seconds each call "thinks" (an ``asyncio.sleep``)."""

    @property
    def _llm_type(self) -> str:
        return "agentlocks-demo-scripted"

    def _next(self, messages: list[BaseMessage]) -> AIMessage:
        human = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
        if isinstance(messages[-1], ToolMessage):
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
        await asyncio.sleep(self.think)
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])


def build_agent(
    checkpointer: BaseCheckpointSaver[Any] | None,
    *,
    think: float,
    tool_delay: float | Callable[[str], float],
    entered: Callable[[str], None] | None = None,
) -> Any:
    """Compile the agent graph on ``checkpointer`` (model -> tools -> model -> end).

    Args:
        checkpointer: Where the graph keeps its threads (``None``: no persistence).
        think: Seconds each model call takes.
        tool_delay: Seconds each ``lookup`` call takes, or a function of its query that
            returns them.
        entered: Called with ``"model"`` or ``"tool"`` as each call begins (tests use it to
            know a call is in flight).
    """
    model = ScriptedChatModel(think=think)

    async def lookup(query: str) -> str:
        """Look ``query`` up (scripted: a delay, then a canned result)."""
        if entered is not None:
            entered("tool")
        await asyncio.sleep(tool_delay(query) if callable(tool_delay) else tool_delay)
        return f"result for {query}"

    tool = StructuredTool.from_function(coroutine=lookup, name="lookup")

    async def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        dangling = dangling_tool_calls(state["messages"])
        if dangling:
            raise ValueError(
                create_error_message(
                    message="Found AIMessages with tool_calls that do not have a "
                    f"corresponding ToolMessage: {dangling}",
                    error_code=ErrorCode.INVALID_CHAT_HISTORY,
                )
            )
        if entered is not None:
            entered("model")
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([tool]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer)
