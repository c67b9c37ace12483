"""A streaming FastAPI endpoint under real uvicorn: 409 on a double-text, freed on disconnect."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from agentlocks import Coordinator
from agentlocks.fastapi import install
from agentlocks.langgraph import guard_graph
from tests.fastapi.conftest import Serve
from tests.fastapi.conftest import serve as serve
from tests.langgraph._graphs import chat_graph
from tests.langgraph.test_graph import cfg, messages_of
from tests.langgraph.test_graph_behaviour import is_held, until_held

NODE_DELAY = 1.0  # seconds the graph's node takes: requests overlap, clients can leave


def make_app(coord: Coordinator) -> tuple[FastAPI, Any]:
    """An app with one streaming run endpoint on a guarded graph (on_busy="reject")."""
    graph = guard_graph(chat_graph(InMemorySaver(), delay=NODE_DELAY), coord, on_busy="reject")
    app = FastAPI()
    install(app)

    @app.post("/threads/{thread_id}/runs/stream")
    async def stream_run(thread_id: str, body: dict[str, Any]) -> StreamingResponse:
        lease = await graph.acquire_thread(thread_id)  # 409 / 503 are still possible here
        stream = graph.stream_with(
            lease,
            {"messages": [HumanMessage(body["text"], id=body["text"])]},
            cfg(thread_id),
            stream_mode="values",  # the input state at once, then the reply
        )
        # Work between the decision and the response (auth, loading, ...), during which a
        # client may leave: the body is then never iterated.
        await asyncio.sleep(body.get("prepare", 0))
        return StreamingResponse(stream, media_type="application/x-ndjson")

    return app, graph


def url(thread_id: str) -> str:
    """The endpoint of ``thread_id``."""
    return f"/threads/{thread_id}/runs/stream"


async def test_double_text_is_409_and_a_whole_stream_frees_the_thread(
    coord: Coordinator, serve: Serve, thread_id: str
) -> None:
    """A second message while a run streams answers 409; the finished stream frees the thread."""
    app, graph = make_app(coord)
    async with serve(app) as client:
        first = asyncio.create_task(client.post(url(thread_id), json={"text": "one"}))
        await until_held(coord, thread_id)
        busy = await client.post(url(thread_id), json={"text": "two"})
        assert busy.status_code == 409
        assert busy.json() == {
            "error": "thread_busy",
            "detail": busy.json()["detail"],
            "key": f"langgraph:{thread_id}",
        }
        done = await first
        assert done.status_code == 200
        last = json.loads(done.text.splitlines()[-1])
        assert [m["content"] for m in last["messages"]] == ["one", "reply to one"]
        assert not await is_held(coord, thread_id)
        again = await client.post(url(thread_id), json={"text": "three"})
        assert again.status_code == 200
    contents = [m.content for m in await messages_of(graph, thread_id)]
    assert contents == ["one", "reply to one", "three", "reply to three"]


async def test_disconnects_free_the_thread(
    coord: Coordinator, serve: Serve, thread_id: str
) -> None:
    """A client leaving mid-stream, or before the first chunk, frees the thread."""
    app, _ = make_app(coord)
    async with serve(app) as client:
        # Mid-stream: the first chunk received, the node still running, the client leaves.
        async with client.stream("POST", url(thread_id), json={"text": "one"}) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert json.loads(await anext(lines))["messages"][0]["content"] == "one"
            assert await is_held(coord, thread_id)
        await until_held(coord, thread_id, held=False)

        # Before the response starts: the stream was made but never iterated.
        call = asyncio.create_task(client.post(url(thread_id), json={"text": "two", "prepare": 10}))
        await until_held(coord, thread_id)
        call.cancel()  # httpx closes the connection: the client is gone
        await asyncio.gather(call, return_exceptions=True)
        await until_held(coord, thread_id, held=False)

        final = await client.post(url(thread_id), json={"text": "three"})
        assert final.status_code == 200
    assert not await is_held(coord, thread_id)
