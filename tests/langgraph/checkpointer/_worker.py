"""A separate OS process for the checkpointer tests (``-m tests.langgraph.checkpointer._worker``).

``turns COORD_URL NAMESPACE PG_URL THREAD TAG N``: open an AsyncPostgresSaver on PG_URL,
wrapped by guard_checkpointer on a coordinator at COORD_URL; print ``READY``, wait for a
line on stdin, then run N turns at once on THREAD (user messages ``<TAG><i>``); print one
JSON line ``{"won": [messages of runs that returned], "lost": [error class names]}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import agentlocks
from agentlocks.langgraph._checkpointer import guard_checkpointer
from tests.langgraph.checkpointer._graphs import chat_graph, config


async def turns(coord_url: str, namespace: str, pg_url: str, thread: str, tag: str, n: int) -> None:
    """Run N concurrent turns on THREAD through the guarded saver; report who won."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    async with (
        agentlocks.connect(coord_url, namespace=namespace) as coord,
        AsyncPostgresSaver.from_conn_string(pg_url) as inner,
    ):
        graph = chat_graph(guard_checkpointer(inner, coord))
        await graph.aget_state(config("warm-up"))  # connect before the start line
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        results: list[Any] = await asyncio.gather(
            *(graph.ainvoke({"messages": [f"{tag}{i}"]}, config(thread)) for i in range(n)),
            return_exceptions=True,
        )
    won = [f"{tag}{i}" for i, r in enumerate(results) if not isinstance(r, BaseException)]
    lost = [type(r).__name__ for r in results if isinstance(r, BaseException)]
    print(json.dumps({"won": won, "lost": lost}), flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode != "turns":
        raise SystemExit(f"unknown mode {mode!r}")
    asyncio.run(turns(args[0], args[1], args[2], args[3], args[4], int(args[5])))
