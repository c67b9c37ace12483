"""How a guarded run tells the guarded checkpointer which lease it holds.

``guard_graph`` takes the thread's lease before a run starts and puts it in two places:
the run's ``config["configurable"]`` (under :data:`LEASE_KEY`: LangGraph copies the config
into nested subgraph calls and into the tasks of every superstep, across threads too) and a
context variable (for code that reaches the saver without the config, and for re-entry from
inside a node). ``guard_checkpointer`` reads it back with :func:`lease_for` to fence writes.

Keys starting with ``__`` are LangGraph's convention for run-internal configurable entries:
they are not copied into checkpoint metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Final

from agentlocks._lease import Lease

__all__ = ["LEASE_KEY", "current_lease", "lease_for"]

LEASE_KEY: Final = "__agentlocks_lease__"
"""``config["configurable"][LEASE_KEY]``: the ``Lease`` of the thread the run holds."""

current_lease: ContextVar[Lease | None] = ContextVar("agentlocks_thread_lease", default=None)


def lease_for(config: Mapping[str, Any] | None, thread_id: object = None) -> Lease | None:
    """Return the lease a guarded run holds for ``config``'s thread, or None.

    The config's marker wins; the context variable is used only when it is for the same
    thread (``thread_id`` None: any), so a lease of one thread never fences another's writes.
    """
    configurable = (config or {}).get("configurable") or {}
    lease = configurable.get(LEASE_KEY)
    if isinstance(lease, Lease):
        return lease
    lease = current_lease.get()
    if lease is None:
        return None
    if thread_id is not None and not lease.key.endswith(f":{thread_id}"):
        return None
    return lease
