"""The in-process put path (InMemorySaver on memory://, a run's fenced child): same outcomes."""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver

import agentlocks
from agentlocks import ConcurrentRunError, Coordinator, LeaseLost
from agentlocks.langgraph._checkpointer import guard_checkpointer
from agentlocks.langgraph._context import LEASE_KEY, thread_key
from tests.langgraph.checkpointer._graphs import config


class FailingPutSaver(InMemorySaver):
    """An InMemorySaver whose next synchronous put fails (its aput stays InMemorySaver's)."""

    fail_next = False

    def put(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk full")
        return super().put(*args, **kwargs)


async def _root(saver: Any, thread_id: str) -> str:
    """Write a thread's first checkpoint (no lease); return its id."""
    first = empty_checkpoint()
    await saver.aput(config(thread_id, checkpoint_ns=""), first, {}, {})
    return str(first["id"])


def _child(thread_id: str, parent: str, lease: Any) -> dict[str, Any]:
    return config(thread_id, checkpoint_ns="", checkpoint_id=parent, **{LEASE_KEY: lease})


async def test_fenced_child_swaps_without_suspending(thread_id: str) -> None:
    """A leased run's child of the head is written at once and moves the head."""
    async with agentlocks.connect() as coord:
        inner = InMemorySaver()
        saver = guard_checkpointer(inner, coord)
        root = await _root(saver, thread_id)
        lease = await coord.acquire(thread_key(thread_id))
        child = empty_checkpoint()
        put = saver.aput(_child(thread_id, root, lease), child, {}, {})
        with pytest.raises(StopIteration):  # done at its first step
            put.send(None)
        assert child["id"] in inner.storage[thread_id][""]
        with pytest.raises(ConcurrentRunError, match=child["id"]):  # the head moved
            await saver.aput(_child(thread_id, root, lease), empty_checkpoint(), {}, {})
        await lease.release()


async def test_fenced_child_of_a_stale_parent_is_refused(thread_id: str) -> None:
    """A leased run whose parent is no longer the head gets ConcurrentRunError, unwritten."""
    async with agentlocks.connect() as coord:
        inner = InMemorySaver()
        saver = guard_checkpointer(inner, coord)
        root = await _root(saver, thread_id)
        moved = empty_checkpoint()
        await saver.aput(config(thread_id, checkpoint_ns="", checkpoint_id=root), moved, {}, {})
        lease = await coord.acquire(thread_key(thread_id))
        late = empty_checkpoint()
        with pytest.raises(ConcurrentRunError, match="no longer the thread's head"):
            await saver.aput(_child(thread_id, root, lease), late, {}, {})
        assert late["id"] not in inner.storage[thread_id][""]
        await lease.release()


async def test_fenced_child_of_an_older_lease_is_fenced(coord: Coordinator, thread_id: str) -> None:
    """A child under an older token than the head's writer raises LeaseLost, unwritten."""
    inner = InMemorySaver()
    saver = guard_checkpointer(inner, coord)
    old = await coord.acquire(thread_key(thread_id))
    await old.release()
    new = await coord.acquire(thread_key(thread_id))
    first = empty_checkpoint()
    await saver.aput(config(thread_id, checkpoint_ns="", **{LEASE_KEY: new}), first, {}, {})
    stale = empty_checkpoint()
    with pytest.raises(LeaseLost, match="newer lease"):
        await saver.aput(_child(thread_id, str(first["id"]), old), stale, {}, {})
    assert stale["id"] not in inner.storage[thread_id][""]
    await new.release()


async def test_fenced_child_of_a_lost_lease_is_refused(thread_id: str) -> None:
    """A lease known lost is refused before the swap: the head does not move."""
    coord = agentlocks.connect()
    inner = InMemorySaver()
    saver = guard_checkpointer(inner, coord)
    root = await _root(saver, thread_id)
    lease = await coord.acquire(thread_key(thread_id))
    await coord.aclose()  # an in-process lease still held at close is lost
    assert lease.lost
    with pytest.raises(LeaseLost, match="was lost"):
        await saver.aput(_child(thread_id, root, lease), empty_checkpoint(), {}, {})
    assert list(inner.storage[thread_id][""]) == [root]


async def test_failed_fast_write_puts_the_head_back(thread_id: str) -> None:
    """A failing write on the in-process path restores the head: the parent is still it."""
    async with agentlocks.connect() as coord:
        inner = FailingPutSaver()
        saver = guard_checkpointer(inner, coord)
        assert saver._inline  # type: ignore[attr-defined]  # the path under test
        root = await _root(saver, thread_id)
        lease = await coord.acquire(thread_key(thread_id))
        inner.fail_next = True
        with pytest.raises(OSError, match="disk full"):
            await saver.aput(_child(thread_id, root, lease), empty_checkpoint(), {}, {})
        again = empty_checkpoint()
        await saver.aput(_child(thread_id, root, lease), again, {}, {})
        assert again["id"] in inner.storage[thread_id][""]
        await lease.release()


async def test_fork_mark_still_skips_the_precondition(thread_id: str) -> None:
    """A leased put whose parent was read by id (time travel) is a fork, not a conflict."""
    async with agentlocks.connect() as coord:
        inner = InMemorySaver()
        saver = guard_checkpointer(inner, coord)
        root = await _root(saver, thread_id)
        await saver.aput(
            config(thread_id, checkpoint_ns="", checkpoint_id=root), empty_checkpoint(), {}, {}
        )
        lease = await coord.acquire(thread_key(thread_id))
        at_root = _child(thread_id, root, lease)
        assert await saver.aget_tuple(at_root) is not None  # the explicit read marks a fork
        fork = empty_checkpoint()
        await saver.aput(at_root, fork, {}, {})
        assert fork["id"] in inner.storage[thread_id][""]
        await lease.release()
