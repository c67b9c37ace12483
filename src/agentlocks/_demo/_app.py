"""The demo's FastAPI app: a streaming chat endpoint over the LangGraph agent.

Unguarded, it is what many agent backends look like. Guarded, it is the same app with the
two lines of ``agentlocks.langgraph`` switched on, and the run's thread taken *before* the
response starts, so a busy thread can still be answered 409 and a full cluster 503::

    checkpointer = guard_checkpointer(saver, coord)
    graph = guard_graph(build_agent(checkpointer), coord, on_busy=..., max_concurrent_runs=...)

Endpoints:
    ``POST /threads/{thread_id}/runs`` ``{"id", "text"}``: one user message; streams NDJSON
    lines ``{"node", "messages"}`` and a last line ``{"end": "done" | "interrupted" |
    "error"}``. ``GET /threads/{thread_id}``: the thread's messages and dangling tool calls.
    ``DELETE /threads/{thread_id}``. ``GET /health``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.errors import GraphDrained
from pydantic import BaseModel

import agentlocks
import agentlocks.fastapi

from ._agent import build_agent, dangling_tool_calls
from ._settings import AppSettings

__all__ = ["create_app", "encode", "open_saver"]

log = logging.getLogger("agentlocks.demo")


class UserMessage(BaseModel):
    """The body of a run request: the message's id (chosen by the client) and text."""

    id: str
    text: str


def message_json(message: BaseMessage) -> dict[str, Any]:
    """A compact JSON view of one message (what the driver needs to check the history)."""
    out: dict[str, Any] = {"id": message.id, "type": message.type, "content": message.content}
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [call["id"] for call in message.tool_calls]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    return out


def encode(chunk: Any) -> str:
    """One NDJSON line per ``stream_mode="updates"`` chunk: ``{"node", "messages"}``."""
    lines = []
    for node, update in dict(chunk).items():
        messages = update.get("messages", []) if isinstance(update, dict) else []
        lines.append(json.dumps({"node": node, "messages": [message_json(m) for m in messages]}))
    return "".join(line + "\n" for line in lines)


class Ending:
    """A response body: the run's lines, then one line saying how the run ended.

    Once the status line is sent, an error can no longer become a 500; this last line says
    what happened instead of a cut connection. ``aclose()`` closes the wrapped stream (for
    ``stream_with``'s body that frees the thread's lease, also before the first chunk).
    Cancellation (a client disconnect) is not caught: it reaches the wrapped stream, which
    frees the lease once LangGraph has flushed. A body Starlette never iterates nor closes (a
    client gone before the response started) is dropped with the wrapped stream, whose own
    finaliser then frees the lease.
    """

    __slots__ = ("_over", "_stream")

    def __init__(self, stream: AsyncIterator[str | bytes]) -> None:
        self._stream = stream
        self._over = False

    def __aiter__(self) -> Ending:
        return self

    async def __anext__(self) -> str | bytes:
        if self._over:
            raise StopAsyncIteration
        end: dict[str, str]
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            end = {"end": "done"}
        except GraphDrained:
            # on_busy="interrupt": a newer message stopped this run at a step boundary,
            # with its checkpoint saved; the newer run answers.
            end = {"end": "interrupted"}
        except Exception as exc:
            log.warning("run failed: %s: %s", type(exc).__name__, exc)
            end = {"end": "error", "detail": f"{type(exc).__name__}: {exc}"[:500]}
        self._over = True
        return json.dumps(end) + "\n"

    async def aclose(self) -> None:
        """Close the wrapped stream (idempotent)."""
        self._over = True
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def _encoded(stream: AsyncIterator[Any]) -> AsyncIterator[str]:
    async for chunk in stream:
        yield encode(chunk)


@asynccontextmanager
async def open_saver(spec: str) -> AsyncIterator[Any]:
    """The LangGraph saver ``spec`` names: ``sqlite:<path>`` or a PostgreSQL DSN."""
    if spec.startswith("sqlite:"):
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(spec.removeprefix("sqlite:")) as saver:
            yield saver
    else:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        async with AsyncPostgresSaver.from_conn_string(spec) as saver:
            yield saver


def _guard(saver: Any, coord: agentlocks.Coordinator, settings: AppSettings) -> Any:
    """The app's two agentlocks lines."""
    from agentlocks.langgraph import guard_checkpointer, guard_graph

    checkpointer = guard_checkpointer(saver, coord)
    graph = build_agent(checkpointer, think=settings.think, tool_delay=settings.tool_delay)
    return guard_graph(
        graph,
        coord,
        on_busy=settings.strategy,
        timeout=settings.timeout,
        max_concurrent_runs=settings.capacity,
    )


def create_app(settings: AppSettings) -> FastAPI:
    """The demo app, guarded or not as ``settings`` says."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            saver = await stack.enter_async_context(open_saver(settings.saver))
            coord = agentlocks.connect(settings.url, namespace=settings.namespace)
            await stack.enter_async_context(coord)
            if settings.guarded:
                graph = _guard(saver, coord, settings)
                stack.push_async_callback(graph.aclose)
            else:
                graph = build_agent(saver, think=settings.think, tool_delay=settings.tool_delay)
            app.state.graph = graph
            yield

    app = FastAPI(title="agentlocks demo agent", lifespan=lifespan)
    agentlocks.fastapi.install(app)  # ThreadBusy -> 409, Unavailable -> 503 + Retry-After

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "guarded": settings.guarded, "strategy": settings.strategy}

    @app.post("/threads/{thread_id}/runs")
    async def run(thread_id: str, message: UserMessage) -> StreamingResponse:
        graph = app.state.graph
        config = {"configurable": {"thread_id": thread_id}}
        turn = {"messages": [HumanMessage(message.text, id=message.id)]}
        body: AsyncIterator[str | bytes]
        if settings.guarded:
            # Decide before the first byte: ThreadBusy (409) or Unavailable (503) still
            # become a status code; the stream frees the lease however it ends.
            lease = await graph.acquire_thread(thread_id)
            body = graph.stream_with(lease, turn, config, encode=encode, stream_mode="updates")
        else:
            body = _encoded(graph.astream(turn, config, stream_mode="updates"))
        return StreamingResponse(Ending(body), media_type="application/x-ndjson")

    @app.get("/threads/{thread_id}")
    async def history(thread_id: str) -> dict[str, Any]:
        state = await app.state.graph.aget_state({"configurable": {"thread_id": thread_id}})
        messages = state.values.get("messages", [])
        return {
            "messages": [message_json(m) for m in messages],
            "dangling": dangling_tool_calls(messages),
        }

    @app.delete("/threads/{thread_id}")
    async def forget(thread_id: str) -> dict[str, bool]:
        # Through the graph's checkpointer: a guarded one forgets its head record too.
        await app.state.graph.checkpointer.adelete_thread(thread_id)
        return {"deleted": True}

    return app
