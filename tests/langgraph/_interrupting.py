"""A minimal interrupting guard of the drain tests' own (the agent is ``_graphs.agent``).

:func:`interrupting_run` is the ``on_busy="interrupt"`` flow written out plainly (take the
thread lock, or ask the holder to drain, wait, cancel after the drain timeout; watch while
running; close dangling tool calls after a drain or a cancel), so these tests do not depend
on ``guard_graph``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langgraph.errors import GraphDrained
from langgraph.runtime import RunControl

from agentlocks import AcquireTimeout, Busy, Coordinator
from agentlocks.langgraph._drain import DrainSignals, close_dangling_tool_calls, thread_key
from tests.langgraph._graphs import user


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
