"""A streaming LangGraph chat endpoint that never loses a message to a double-text.

``POST /threads/{thread_id}/messages`` runs a tool-calling agent (a scripted model that looks
something up, then answers: no LLM, no network) and streams its updates as JSON lines. The
two agentlocks lines are in ``create_app``:

* ``guard_checkpointer(saver, coord)``: a concurrent run's checkpoint write is refused
  (``ConcurrentRunError``) instead of silently replacing another run's messages;
* ``guard_graph(graph, coord, on_busy="reject", max_concurrent_runs=...)``: one run per
  thread, across every replica sharing the coordinator's server; a double-text gets 409
  (``ThreadBusy``), a full service 503 (``Unavailable``), before any response byte.

The thread is taken with ``graph.acquire_thread`` before the response starts and handed to
``graph.stream_with``, which frees it when the stream ends, fails, or the client goes away
(a tool call cut short is closed with a ``ToolMessage``, so the thread stays usable).

Run it::

    python examples/langgraph_chat.py                        # http://127.0.0.1:8000
    AGENTLOCKS_URL=redis://localhost:6379/0 python examples/langgraph_chat.py --port 8001
    python examples/langgraph_chat.py --demo                 # serve, double-text, exit

``--demo`` serves on a free loopback port, sends a message, double-texts it (409), leaves a
stream half-way (the thread is freed), then sends another message, and exits non-zero if a
message was lost or the thread was left wedged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from pydantic import BaseModel

import agentlocks
from agentlocks.fastapi import install
from agentlocks.langgraph import guard_checkpointer, guard_graph

THINK_SECONDS = 0.3  # how long the scripted model "thinks" per call


@tool
async def lookup(query: str) -> str:
    """Look ``query`` up (a slow tool)."""
    await asyncio.sleep(THINK_SECONDS)
    return f"notes about {query}"


class ScriptedModel(BaseChatModel):
    """Asks for one lookup per user message, then answers from the tool's result."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:
        return self

    def _generate(self, messages: list[BaseMessage], *a: Any, **k: Any) -> ChatResult:
        raise NotImplementedError("async only")

    async def _agenerate(self, messages: list[BaseMessage], *a: Any, **k: Any) -> ChatResult:
        await asyncio.sleep(THINK_SECONDS)
        last = messages[-1]
        if isinstance(last, HumanMessage):
            call = {
                "name": "lookup",
                "args": {"query": str(last.content)},
                "id": f"c{len(messages)}",
            }
            reply = AIMessage("", tool_calls=[call])
        else:
            reply = AIMessage(f"answer using {last.content}")
        return ChatResult(generations=[ChatGeneration(message=reply)])


def build_agent(checkpointer: Any) -> Any:
    """model -> tools -> model, compiled with ``checkpointer``."""
    model = ScriptedModel()

    async def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", call_model)
    builder.add_node("tools", ToolNode([lookup]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer)


class Message(BaseModel):
    text: str


def create_app(url: str | None = None) -> FastAPI:
    """The app; its coordinator is on ``url`` (default ``$AGENTLOCKS_URL`` or memory://)."""
    coord = agentlocks.connect(url)
    saver = InMemorySaver()  # AsyncPostgresSaver across replicas
    graph = guard_graph(
        build_agent(guard_checkpointer(saver, coord)),
        coord,
        on_busy="reject",
        max_concurrent_runs=32,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with coord:
            yield

    app = FastAPI(lifespan=lifespan)
    install(app)  # ThreadBusy -> 409, Unavailable -> 503 + Retry-After

    @app.post("/threads/{thread_id}/messages")
    async def post_message(thread_id: str, message: Message) -> StreamingResponse:
        lease = await graph.acquire_thread(thread_id)  # 409 or 503 from here, before a byte
        config = {"configurable": {"thread_id": thread_id}}
        body = graph.stream_with(
            lease, {"messages": [HumanMessage(message.text)]}, config, stream_mode="updates"
        )
        return StreamingResponse(body, media_type="application/x-ndjson")

    @app.get("/threads/{thread_id}")
    async def history(thread_id: str) -> list[dict[str, str]]:
        state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
        return [
            {"type": type(m).__name__, "content": str(m.content)}
            for m in state.values.get("messages", [])
        ]

    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def demo() -> int:
    """Serve on a free port, double-text, disconnect mid-stream, check the history."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app("memory://"), port=port, log_level="warning", ws="none")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn.Server has no "started" event
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{port}/threads/t1"
    failures: list[str] = []
    async with httpx.AsyncClient(timeout=30) as http:

        async def send(text: str) -> int:
            async with http.stream("POST", base + "/messages", json={"text": text}) as response:
                if response.status_code != 200:
                    await response.aread()
                    print("   ", text, "->", response.status_code, response.json()["error"])
                    return response.status_code
                async for line in response.aiter_lines():
                    if line:
                        print("   ", text, "->", list(json.loads(line)))
                return response.status_code

        first = asyncio.create_task(send("hi"))
        await asyncio.sleep(0.1)
        double = await http.post(base + "/messages", json={"text": "hello?"})
        print("double-text:", double.status_code, double.json())
        if double.status_code != 409:
            failures.append(f"the double-text got {double.status_code}, not 409")
        await first

        # A client that goes away while the tool runs: the thread must be freed, usable.
        async with http.stream("POST", base + "/messages", json={"text": "weather"}) as cut:
            async for _ in cut.aiter_lines():
                break  # the model's tool call arrived; leave before the tool answers
        print("left a stream half-way")
        for _ in range(100):  # the server notices the disconnect and frees the thread
            if await send("still there?") == 200:
                break
            await asyncio.sleep(0.05)
        else:
            failures.append("the thread stayed busy after the client left")
        history = (await http.get(base)).json()
    server.should_exit = True
    await serving
    humans = [m["content"] for m in history if m["type"] == "HumanMessage"]
    print("history:", [f"{m['type']}: {m['content']}" for m in history])
    if humans != ["hi", "weather", "still there?"]:
        failures.append(f"user messages kept: {humans}")
    tools = {m["content"] for m in history if m["type"] == ToolMessage.__name__}
    if not any("interrupted" in t for t in tools):
        failures.append("the tool call cut short by the disconnect was not closed")
    for failure in failures:
        print("FAILED:", failure)
    print("ok" if not failures else "not ok")
    return 1 if failures else 0


def main() -> None:
    """Command line: serve on --host/--port, or run the --demo."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="coordinator URL (default $AGENTLOCKS_URL)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--demo", action="store_true", help="serve, double-text, exit")
    args = parser.parse_args()
    if args.demo:
        sys.exit(asyncio.run(demo()))
    uvicorn.run(create_app(args.url), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
