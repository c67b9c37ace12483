"""The tool-calling agent of the drain tests, and a minimal interrupting guard of our own.

* :func:`agent`: ``StateGraph`` + ``ToolNode`` driven by :class:`ScriptedModel` (no
  network): for each user message it first calls the ``lookup`` tool, then answers. Its
  model node refuses a history with an unanswered tool call, as LangGraph's prebuilt agent
  does (``INVALID_CHAT_HISTORY``) and providers do (HTTP 400). Model and tool delays are
  per graph, so a test can make a drain land while the model runs, or a tool outlast the
  drain timeout.
* :func:`interrupting_run`: the ``on_busy="interrupt"`` flow written out plainly (take the
  thread lock, or ask the holder to drain, wait, cancel after the drain timeout; watch
  while running; close dangling tool calls after a drain or a cancel), so these tests do
  not depend on ``guard_graph``.
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
from langgraph.errors import ErrorCode, GraphDrained, create_error_message
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.runtime import RunControl

from agentlocks import AcquireTimeout, Busy, Coordinator
from agentlocks.langgraph._drain import DrainSignals, close_dangling_tool_calls, thread_key


def user(i: int) -> dict[str, list[BaseMessage]]:
    """The input of turn ``i``: one user message ``"msg-<i>"``."""
    return {"messages": [HumanMessage(f"msg-{i}", id=f"human-{i}")]}


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


class ScriptedModel(BaseChatModel):
    """Calls ``lookup`` for the latest user message, then answers once the tool replied."""

    delay: float = 0.02

    @property
    def _llm_type(self) -> str:
        return "scripted"

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
        await asyncio.sleep(self.delay)
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])


def agent(
    checkpointer: BaseCheckpointSaver[Any],
    *,
    model_delay: float = 0.02,
    tool_delay: float = 0.02,
    entered: Callable[[str], None] | None = None,
) -> Any:
    """A ReAct agent: model -> tools -> model, refusing an invalid chat history.

    ``tool_delay`` is the time the tool takes for turn 1 (``"msg-1"``); later turns' tool
    calls take 0.02 s, so a test of a slow first run does not wait for slow later ones.
    ``entered("model")`` / ``entered("tool")`` is called as each call begins.
    """
    model = ScriptedModel(delay=model_delay)

    async def lookup(query: str) -> str:
        """Look ``query`` up (scripted)."""
        if entered is not None:
            entered("tool")
        await asyncio.sleep(tool_delay if query == "msg-1" else 0.02)
        return f"result for {query}"

    tool = StructuredTool.from_function(coroutine=lookup, name="lookup")

    async def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        dangling = dangling_tool_calls(state["messages"])
        if dangling:
            raise ValueError(
                create_error_message(
                    message=f"AIMessages with tool_calls lack a ToolMessage: {dangling}",
                    error_code=ErrorCode.INVALID_CHAT_HISTORY,
                )
            )
        if entered is not None:
            entered("model")
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", call_model)
    builder.add_node("tools", ToolNode([tool]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer)


async def interrupting_run(
    graph: Any,
    coord: Coordinator,
    signals: DrainSignals,
    turn: int,
    thread_id: str,
    *,
    drain_timeout: float,
) -> tuple[str, Any]:
    """Run turn ``turn`` on ``thread_id`` the ``"interrupt"`` way; return (outcome, result).

    ``outcome`` is ``"done"``, ``"drained"`` (stopped at a step boundary) or
    ``"cancelled"`` (did not reach one within the other run's drain timeout).
    """
    key = thread_key(thread_id)
    config: Any = {"configurable": {"thread_id": thread_id}}
    try:
        lease = await coord.acquire(key, wait=False)
    except Busy:
        await signals.request_drain(thread_id)
        try:
            lease = await coord.acquire(key, timeout=drain_timeout)
        except AcquireTimeout:
            await signals.request_cancel(thread_id)
            lease = await coord.acquire(key, timeout=30)
    try:
        control = RunControl()
        run = asyncio.ensure_future(graph.ainvoke(user(turn), config, control=control))
        outcome, result = "done", None
        async with signals.watch(thread_id, control, run.cancel, lease=lease):
            try:
                result = await run
            except GraphDrained:
                outcome = "drained"
            except asyncio.CancelledError:
                if not run.cancelled():
                    raise  # we are cancelled ourselves
                outcome = "cancelled"  # LangGraph's exit task ran before the task ended
        if outcome != "done":
            await close_dangling_tool_calls(graph, config)
        return outcome, result
    finally:
        await lease.release()
