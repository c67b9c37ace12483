"""The other OS process of the cross-process drain tests (``-m tests.langgraph._drain_worker``).

Arguments: ``LOCK_URL PG_URL NAMESPACE THREAD TURN MODEL_DELAY TOOL_DELAY DRAIN_TIMEOUT``.
Runs turn TURN of the drain tests' agent on THREAD the ``"interrupt"`` way, with its
checkpoints in PostgreSQL (PG_URL, tables set up by the test) and its thread lock on
LOCK_URL; prints ``STARTED`` once it holds the thread and watches, then one JSON line:
``{"outcome": "done" | "drained" | "cancelled"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

import agentlocks
from agentlocks.langgraph._drain import DrainSignals
from tests.langgraph._drain_graphs import agent, interrupting_run


async def main(argv: list[str]) -> None:
    """Run one turn and report how it ended."""
    lock_url, pg_url, namespace, thread, turn, model_delay, tool_delay, drain_timeout = argv
    async with (
        agentlocks.connect(lock_url, namespace=namespace) as coord,
        AsyncPostgresSaver.from_conn_string(pg_url) as saver,
    ):
        graph = agent(saver, model_delay=float(model_delay), tool_delay=float(tool_delay))
        started = asyncio.Event()

        async def announce() -> None:
            await started.wait()
            print("STARTED", flush=True)

        announcer = asyncio.create_task(announce())
        outcome, _ = await interrupting_run(
            graph, coord, DrainSignals(coord), int(turn), thread,
            drain_timeout=float(drain_timeout), started=started,
        )  # fmt: skip
        await announcer
        print(json.dumps({"outcome": outcome}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
