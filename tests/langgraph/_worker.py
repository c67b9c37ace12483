"""A separate OS process for the multi-process LangGraph tests (`python -m` this module).

``runs LOCKING COORD_URL NAMESPACE PG_URL THREAD_ID PREFIX COUNT``: open an
``AsyncPostgresSaver`` on PG_URL, print ``READY``, wait for a line on stdin, then run COUNT
concurrent ``ainvoke`` of the chat graph on THREAD_ID, with user messages
``PREFIX-0`` ... ``PREFIX-<COUNT-1>``. LOCKING is ``guard`` (guard_graph on a coordinator
at COORD_URL) or ``local`` (one ``asyncio.Lock`` per process: the fix that does not work
across replicas). Prints ``DONE`` when every run returned.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

import agentlocks
from agentlocks.langgraph import guard_graph
from tests.langgraph._graphs import chat_graph


async def runs(
    locking: str, url: str, namespace: str, pg_url: str, thread_id: str, prefix: str, count: int
) -> None:
    """Run COUNT concurrent turns on one thread, from this process."""
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id}}
    async with (
        agentlocks.connect(url, namespace=namespace) as coord,
        AsyncPostgresSaver.from_conn_string(pg_url) as saver,
    ):
        graph = chat_graph(saver, delay=0.02)
        local = asyncio.Lock()

        async def one(i: int) -> None:
            turn = {"messages": [HumanMessage(f"{prefix}-{i}", id=f"{prefix}-{i}")]}
            if locking == "guard":
                await guarded.ainvoke(turn, config)
            else:
                async with local:
                    await graph.ainvoke(turn, config)

        guarded = guard_graph(graph, coord, timeout=40)
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await asyncio.gather(*(one(i) for i in range(count)))
    print("DONE", flush=True)


def main(argv: list[str]) -> None:
    """Run the mode named by ``argv[0]``."""
    mode, *rest = argv
    if mode != "runs":
        raise SystemExit(f"unknown mode {mode!r}")
    locking, url, namespace, pg_url, thread_id, prefix, count = rest
    asyncio.run(runs(locking, url, namespace, pg_url, thread_id, prefix, int(count)))


if __name__ == "__main__":
    main(sys.argv[1:])
