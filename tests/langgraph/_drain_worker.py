"""The other OS process of the cross-process drain tests (``-m tests.langgraph._drain_worker``).

Arguments: ``STYLE LOCK_URL PG_URL NAMESPACE THREAD TURN MODEL_DELAY TOOL_DELAY
DRAIN_TIMEOUT``. Runs turn TURN of the drain tests' agent on THREAD the ``"interrupt"`` way
(STYLE ``own``: the tests' own minimal guard; ``guard``: ``guard_graph``), with its
checkpoints in PostgreSQL (PG_URL, tables set up by the test) and its thread lock on
LOCK_URL; prints ``IN_MODEL`` or ``IN_TOOL`` as its first model or tool call begins (the
test interrupts it then; ``IN_TOOL`` only with a slow tool), then one JSON line:
``{"outcome": "done" | "drained" | "cancelled"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.errors import GraphDrained

import agentlocks
from agentlocks.langgraph import guard_graph
from agentlocks.langgraph._drain import DrainSignals
from tests.langgraph._graphs import agent, user
from tests.langgraph._interrupting import interrupting_run


async def main(argv: list[str]) -> None:
    """Run one turn and report how it ended."""
    style, lock_url, pg_url, namespace, thread, turn, model_delay, tool_delay, drain_timeout = argv
    async with (
        agentlocks.connect(lock_url, namespace=namespace) as coord,
        AsyncPostgresSaver.from_conn_string(pg_url) as saver,
    ):
        slow_tool = float(tool_delay) > 1
        announced: set[str] = set()

        def entered(what: str) -> None:
            if what == ("tool" if slow_tool else "model") and what not in announced:
                announced.add(what)
                print(f"IN_{what.upper()}", flush=True)

        graph = agent(
            saver, model_delay=float(model_delay), tool_delay=float(tool_delay), entered=entered
        )
        if style == "own":
            outcome, _ = await interrupting_run(
                graph, coord, DrainSignals(coord), int(turn), thread,
                drain_timeout=float(drain_timeout),
            )  # fmt: skip
        else:
            guarded = guard_graph(
                graph, coord, on_busy="interrupt", drain_timeout=float(drain_timeout)
            )
            try:
                await guarded.ainvoke(user(int(turn)), {"configurable": {"thread_id": thread}})
                outcome = "done"
            except GraphDrained as exc:  # guard_graph ends a cancelled run as drained too
                outcome = "cancelled" if "cancelled" in exc.reason else "drained"
        print(json.dumps({"outcome": outcome}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
