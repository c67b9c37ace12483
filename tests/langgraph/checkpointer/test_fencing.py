"""Writes of a run holding its thread's lease: a lost lease or an older token never lands."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver

import agentlocks
from agentlocks import Coordinator, Lease, LeaseLost
from agentlocks.langgraph._checkpointer import guard_checkpointer
from agentlocks.langgraph._context import LEASE_KEY, current_lease, thread_key
from tests.conformance.test_conformance import BREAKERS
from tests.langgraph.checkpointer._graphs import chat_graph, config, messages
from tests.support.lossy_backend import LossyBackend

agentlocks.register_backend("lossy", "tests.support.lossy_backend:LossyBackend", replace=True)

REMOTE = [
    pytest.param("lossy", id="coord-lossy"),
    pytest.param("redis", id="coord-redis", marks=pytest.mark.redis),
    pytest.param("postgresql", id="coord-postgresql", marks=pytest.mark.postgres),
]


@pytest_asyncio.fixture(params=REMOTE)
async def remote(request: pytest.FixtureRequest) -> AsyncIterator[Coordinator]:
    """A coordinator whose leases can be lost: lossy://, Redis or PostgreSQL."""
    from tests.conftest import backend_url_for

    url = "lossy://" if request.param == "lossy" else backend_url_for(request.param)
    async with agentlocks.connect(url, namespace=f"fence-{uuid.uuid4().hex[:12]}") as coord:
        yield coord


async def _break(coord: Coordinator, lease: Lease) -> None:
    """End the lease on the server, then let the holder learn it (one verify round trip)."""
    backend = coord.backend
    if isinstance(backend, LossyBackend):
        backend.revoke(lease._grant)  # type: ignore[arg-type]
    else:
        await BREAKERS[coord._settings.scheme](coord, lease)
    with pytest.raises(LeaseLost):
        await lease.verify()
    assert lease.lost


async def test_lost_lease_is_refused_before_the_saver(remote: Coordinator, thread_id: str) -> None:
    """A run whose lease was lost raises LeaseLost; the saver never sees its checkpoints."""
    inner = InMemorySaver()
    graph = chat_graph(guard_checkpointer(inner, remote))
    lease = await remote.acquire(thread_key(thread_id))
    await _break(remote, lease)
    reset = current_lease.set(lease)
    try:
        with pytest.raises(LeaseLost, match="was lost"):
            await graph.ainvoke({"messages": ["u"]}, config(thread_id))
    finally:
        current_lease.reset(reset)
    assert not any(inner.storage.get(thread_id, {}).values())  # (the run's read made an entry)
    assert not [k for k in inner.writes if k[0] == thread_id]
    # Through the config marker too (how guard_graph passes it), for aput_writes as well.
    saver = guard_checkpointer(inner, remote)
    marked = config(thread_id, checkpoint_ns="", checkpoint_id="x", **{LEASE_KEY: lease})
    with pytest.raises(LeaseLost):
        await saver.aput_writes(marked, [("messages", ["w"])], "task-1")
    with pytest.raises(LeaseLost):
        await saver.aput(marked, empty_checkpoint(), {"step": 0}, {})
    assert not inner.writes
    with contextlib.suppress(LeaseLost):
        await lease.release()


async def test_lower_token_after_higher_is_fenced(coord: Coordinator, thread_id: str) -> None:
    """A run holding an older lease cannot move the head past a newer lease's write."""
    inner = InMemorySaver()
    saver = guard_checkpointer(inner, coord)
    graph = chat_graph(saver)
    old = await coord.acquire(thread_key(thread_id))
    await old.release()
    new = await coord.acquire(thread_key(thread_id))
    assert new.token > old.token
    await graph.ainvoke({"messages": ["new"]}, config(thread_id, **{LEASE_KEY: new}))
    head = (await inner.aget_tuple(config(thread_id))).config  # type: ignore[union-attr]
    # The old lease is not lost as far as its holder knows: only the server's fence stops it.
    assert not old.lost
    stale = config(thread_id, checkpoint_ns="", **{LEASE_KEY: old})
    stale["configurable"]["checkpoint_id"] = head["configurable"]["checkpoint_id"]
    child = empty_checkpoint()
    with pytest.raises(LeaseLost, match="newer lease"):
        await saver.aput(stale, child, {"step": 5}, {})
    assert child["id"] not in inner.storage[thread_id][""]
    # The newer lease still writes, and so does an unfenced run after it.
    await graph.ainvoke({"messages": ["again"]}, config(thread_id, **{LEASE_KEY: new}))
    await new.release()
    await graph.ainvoke({"messages": ["free"]}, config(thread_id))
    kept = await messages(graph, thread_id)
    assert kept == ["new", "re:new", "again", "re:again", "free", "re:free"]
