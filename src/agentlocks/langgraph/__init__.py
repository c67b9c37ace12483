"""LangGraph integration: no lost messages on double-texts, on one replica or many.

Two one-liners, each useful alone, together the full fix::

    from agentlocks.langgraph import guard_checkpointer, guard_graph

    checkpointer = guard_checkpointer(AsyncPostgresSaver(pool), coord)
    graph = guard_graph(builder.compile(checkpointer=checkpointer), coord,
                        on_busy="enqueue", timeout=60, max_concurrent_runs=64)

Needs ``pip install 'agentlocks[langgraph]'``; ``import agentlocks`` does not import it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from agentlocks.errors import ConfigError

if importlib.util.find_spec("langgraph") is None:  # pragma: no cover - without the extra
    raise ConfigError("agentlocks.langgraph needs LangGraph: pip install 'agentlocks[langgraph]'")

from ._graph import GuardedGraph as GuardedGraph
from ._graph import guard_graph as guard_graph
from ._streams import LeasedStream as LeasedStream

__all__ = ["GuardedGraph", "LeasedStream", "guard_checkpointer", "guard_graph"]


def __getattr__(name: str) -> Any:
    # guard_checkpointer lives in its own module, imported on first use.
    if name == "guard_checkpointer":
        return importlib.import_module(f"{__name__}._checkpointer").guard_checkpointer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
