"""guard_checkpointer's wrapper: the saver surface it mirrors, and its failure paths."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint
from langgraph.checkpoint.conformance.capabilities import DetectedCapabilities
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.pregel._checkpoint import put_writes_accepts_task_path

import agentlocks
from agentlocks import ConcurrentRunError, Coordinator
from agentlocks.langgraph._checkpointer import MIRRORED, guard_checkpointer, overrides
from agentlocks.langgraph._heads import uncancelled_save
from tests.conftest import backend_url_for
from tests.langgraph.checkpointer._graphs import chat_graph, config, messages


class RunsSaver(InMemorySaver):
    """InMemorySaver plus delete_for_runs and copy_thread (optional capabilities)."""

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        for namespaces in self.storage.values():
            for checkpoints in namespaces.values():
                for cid, (_, metadata, _) in list(checkpoints.items()):
                    if self.serde.loads_typed(metadata).get("run_id") in run_ids:
                        del checkpoints[cid]

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        for ns, checkpoints in self.storage[source_thread_id].items():
            self.storage[target_thread_id][ns].update(checkpoints)


class StreamModeSaver(InMemorySaver):
    """A saver whose aput takes an extra argument, as AsyncRedisSaver's takes stream_mode."""

    seen: list[object]

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any,
                   stream_mode: str = "values") -> Any:  # fmt: skip
        self.seen = [*getattr(self, "seen", []), stream_mode]
        return await super().aput(config, checkpoint, metadata, new_versions)


class FlakySaver(InMemorySaver):
    """A saver whose next aput fails (after nothing was stored)."""

    fail_next = False

    async def aput(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk full")
        return await super().aput(*args, **kwargs)


class SlowSaver(InMemorySaver):
    """A saver whose puts take a while (to cancel a caller in the middle of one)."""

    async def aput(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.1)
        return await super().aput(*args, **kwargs)


class SettlingSaver(InMemorySaver):
    """A saver whose puts are stored at once but return a while later (a slow commit reply)."""

    async def aput(self, *args: Any, **kwargs: Any) -> Any:
        stored = await super().aput(*args, **kwargs)
        await asyncio.sleep(0.1)
        return stored


class SpySaver(InMemorySaver):
    """A saver that records, per put, whether it runs in LangGraph's uncancelled save task."""

    uncancelled: list[bool]

    async def aput(self, config: Any, *args: Any, **kwargs: Any) -> Any:
        self.uncancelled = [*getattr(self, "uncancelled", []), uncancelled_save(config)]
        return await super().aput(config, *args, **kwargs)


CAPABILITY_NAMES = [*MIRRORED, "config_specs"]


@pytest.mark.parametrize(
    "saver_type", [InMemorySaver, AsyncPostgresSaver, AsyncSqliteSaver, RunsSaver, StreamModeSaver]
)
def test_wrapper_overrides_exactly_what_the_saver_overrides(saver_type: type) -> None:
    """Capability mirroring: the wrapper class overrides a method iff the saver's class does."""
    from agentlocks.langgraph._checkpointer import wrapper_class

    wrapper = wrapper_class(saver_type)
    for name in CAPABILITY_NAMES:
        assert overrides(wrapper, name) == overrides(saver_type, name), name
    assert wrapper is wrapper_class(saver_type)  # one class per wrapped type
    assert issubclass(wrapper, BaseCheckpointSaver)


async def test_detected_capabilities_match() -> None:
    """LangGraph's conformance detection sees the wrapped saver's optional capabilities."""
    coord = agentlocks.connect()
    for saver in (InMemorySaver(), RunsSaver()):
        assert DetectedCapabilities.from_instance(
            guard_checkpointer(saver, coord)
        ) == DetectedCapabilities.from_instance(saver)


async def test_surface_delegates(thread_id: str) -> None:
    """serde, get_next_version, config_specs, extras, task_path and extra arguments pass."""
    inner = StreamModeSaver()
    saver = guard_checkpointer(inner, agentlocks.connect())
    assert saver.serde is inner.serde
    # String versions (the base class's integers would raise on them), from the saver.
    assert saver.get_next_version(None, None).startswith("0000000000000000000000000000000")
    assert saver.get_next_version("00000000000000000000000000000007.0.5", None).startswith(
        "00000000000000000000000000000008."
    )
    assert saver.config_specs == inner.config_specs
    assert saver.storage is inner.storage  # type: ignore[attr-defined]  # via __getattr__
    assert put_writes_accepts_task_path(saver.aput_writes)
    assert put_writes_accepts_task_path(saver.put_writes)
    await saver.aput(config(thread_id, checkpoint_ns=""), empty_checkpoint(), {}, {},
                     stream_mode="updates")  # fmt: skip
    assert inner.seen == ["updates"]
    assert "StreamModeSaver" in repr(saver)


async def test_with_allowlist_wraps_the_inner_clone(thread_id: str) -> None:
    """with_allowlist returns a wrapper around the saver's clone, sharing the head records."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    inner = InMemorySaver(serde=JsonPlusSerializer(allowed_msgpack_modules=[("json", "dumps")]))
    saver = guard_checkpointer(inner, agentlocks.connect())
    clone = saver.with_allowlist([("tests.langgraph.checkpointer", "Thing")])
    assert type(clone) is type(saver)
    assert clone._inner is not inner and clone.serde is clone._inner.serde  # type: ignore[attr-defined]
    assert clone._heads is saver._heads  # type: ignore[attr-defined]
    graph, graph_clone = chat_graph(saver), chat_graph(clone)
    await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    assert await messages(graph_clone, thread_id) == ["a", "re:a"]  # a shallow clone
    # A double-text split across the original and the clone is still refused.
    results = await asyncio.gather(
        graph.ainvoke({"messages": ["b"]}, config(thread_id)),
        graph_clone.ainvoke({"messages": ["c"]}, config(thread_id)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, ConcurrentRunError) for r in results) == 1


async def test_clock_skew_is_refused(thread_id: str) -> None:
    """A child whose id sorts at or below its parent's is refused, saying why."""
    inner = InMemorySaver()
    saver = guard_checkpointer(inner, agentlocks.connect())
    early, late = empty_checkpoint(), empty_checkpoint()
    assert early["id"] < late["id"]
    parent = await saver.aput(config(thread_id, checkpoint_ns=""), late, {}, {})
    with pytest.raises(ConcurrentRunError, match="clocks"):
        await saver.aput(parent, early, {}, {})
    assert early["id"] not in inner.storage[thread_id][""]


async def test_failed_write_puts_the_head_back(coord: Coordinator, thread_id: str) -> None:
    """A saver write that fails does not wedge the thread: the next run goes through."""
    inner = FlakySaver()
    graph = chat_graph(guard_checkpointer(inner, coord))
    await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    inner.fail_next = True
    with pytest.raises(OSError, match="disk full"):
        await graph.ainvoke({"messages": ["b"]}, config(thread_id))
    await graph.ainvoke({"messages": ["c"]}, config(thread_id))
    assert await messages(graph, thread_id) == ["a", "re:a", "c", "re:c"]


async def test_cancelled_put_settles_before_the_caller_leaves(thread_id: str) -> None:
    """A put cancelled half-way finishes first: saver and head record stay in step."""
    inner = SlowSaver()
    saver = guard_checkpointer(inner, agentlocks.connect())
    first = empty_checkpoint()
    task = asyncio.ensure_future(saver.aput(config(thread_id, checkpoint_ns=""), first, {}, {}))
    await asyncio.sleep(0.05)  # the head is swapped, the saver is still writing
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert first["id"] in inner.storage[thread_id][""]  # written before the cancel returned
    parent = config(thread_id, checkpoint_ns="", checkpoint_id=first["id"])
    await saver.aput(parent, empty_checkpoint(), {}, {})  # the head is the written checkpoint


@pytest.mark.parametrize(("durability", "uncancelled"), [("async", True), ("exit", True),
                                                         ("sync", False)])  # fmt: skip
async def test_only_langgraph_saves_nothing_cancels_skip_the_put_task(
    thread_id: str, durability: str, uncancelled: bool
) -> None:
    """A run's background saves are told apart: not with durability="sync", nor update_state."""
    inner = SpySaver()
    graph = chat_graph(guard_checkpointer(inner, agentlocks.connect()))
    await graph.ainvoke({"messages": ["a"]}, config(thread_id), durability=durability)
    assert inner.uncancelled and set(inner.uncancelled) == {uncancelled}
    inner.uncancelled = []
    await graph.aupdate_state(config(thread_id), {"messages": ["b"]})  # puts in our task
    assert inner.uncancelled == [False]


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
async def test_run_cancelled_mid_put_leaves_the_thread_usable(
    thread_id: str, durability: str
) -> None:
    """A run cancelled while a put is in flight does not wedge the thread, in every durability."""
    # With "sync" the run awaits its save, so the cancellation reaches the save: the put
    # must still end as the saver did (stored: the head is the new checkpoint), not put
    # the head back. With "async" and "exit" the cancellation must not reach it at all
    # (the put runs in LangGraph's task directly: uncancelled_save).
    graph = chat_graph(guard_checkpointer(SettlingSaver(), agentlocks.connect()))
    await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    task = asyncio.ensure_future(
        graph.ainvoke({"messages": ["b"]}, config(thread_id), durability=durability)
    )
    await asyncio.sleep(0.05)  # the input checkpoint is stored, its put not returned
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)  # every put of the cancelled run has settled
    await graph.ainvoke({"messages": ["c"]}, config(thread_id))
    assert (await messages(graph, thread_id))[-2:] == ["c", "re:c"]


async def test_in_memory_put_completes_without_suspending(thread_id: str) -> None:
    """InMemorySaver on memory://: aput never suspends, so no cancel can split swap and write."""
    inner = InMemorySaver()
    saver = guard_checkpointer(inner, agentlocks.connect())
    first = empty_checkpoint()
    put = saver.aput(config(thread_id, checkpoint_ns=""), first, {}, {})
    with pytest.raises(StopIteration):  # done at its first step: no await to cancel at
        put.send(None)
    assert first["id"] in inner.storage[thread_id][""]
    stale = config(thread_id, checkpoint_ns="", checkpoint_id="0")  # not the head
    with pytest.raises(ConcurrentRunError, match=first["id"]):  # the head was swapped too
        await saver.aput(stale, empty_checkpoint(), {}, {})


async def test_cancelled_run_lingering_writes_are_not_interleaved(thread_id: str) -> None:
    """A cancelled run's late puts: a run started at once is refused, one started after goes on."""
    # LangGraph does not cancel a cancelled run's pending puts: they land after the caller
    # saw the cancellation.
    graph = chat_graph(guard_checkpointer(SlowSaver(), agentlocks.connect()))
    task = asyncio.ensure_future(graph.ainvoke({"messages": ["a"]}, config(thread_id)))
    await asyncio.sleep(0.05)  # inside the input checkpoint's put
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ConcurrentRunError):
        await graph.ainvoke({"messages": ["b"]}, config(thread_id))
    await asyncio.sleep(0.5)  # the cancelled run's puts have landed
    await graph.ainvoke({"messages": ["c"]}, config(thread_id))
    kept = await messages(graph, thread_id)
    assert "b" not in kept and kept[-2:] == ["c", "re:c"]


async def test_deleted_runs_do_not_wedge_the_thread(thread_id: str) -> None:
    """adelete_for_runs removing the head (a rollback): the thread's next run is accepted."""
    inner = RunsSaver()
    saver = guard_checkpointer(inner, agentlocks.connect())
    graph = chat_graph(saver)
    await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    first = [s async for s in graph.aget_state_history(config(thread_id))]
    await graph.ainvoke({"messages": ["b"]}, {**config(thread_id), "metadata": {"run_id": "rb"}})
    await saver.adelete_for_runs(["rb"])
    assert len([s async for s in graph.aget_state_history(config(thread_id))]) == len(first)
    await graph.ainvoke({"messages": ["c"]}, config(thread_id))
    assert await messages(graph, thread_id) == ["a", "re:a", "c", "re:c"]
    await saver.acopy_thread(thread_id, thread_id + "-copy")
    await graph.ainvoke({"messages": ["d"]}, config(thread_id + "-copy"))
    assert (await messages(graph, thread_id + "-copy"))[-2:] == ["d", "re:d"]


def test_sync_api_on_memory(thread_id: str) -> None:
    """Synchronous invoke and put work on memory:// and are guarded the same way."""
    from langgraph.graph import END, START, StateGraph

    from tests.langgraph.checkpointer._graphs import Chat

    builder = StateGraph(Chat)
    builder.add_node("reply", lambda state: {"messages": [f"re:{state['messages'][-1]}"]})
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    saver = guard_checkpointer(InMemorySaver(), agentlocks.connect())
    graph = builder.compile(checkpointer=saver)
    graph.invoke({"messages": ["a"]}, config(thread_id))
    graph.invoke({"messages": ["b"]}, config(thread_id))
    assert graph.get_state(config(thread_id)).values["messages"] == ["a", "re:a", "b", "re:b"]
    head = saver.get_tuple(config(thread_id))
    assert head is not None and head.parent_config is not None
    with pytest.raises(ConcurrentRunError):  # a child of the head's parent: a lost update
        saver.put(head.parent_config, empty_checkpoint(), {}, {})


@pytest.mark.redis
async def test_sync_put_on_a_remote_coordinator(thread_id: str) -> None:
    """On a remote backend a sync put runs on the loop from another thread; never on it."""
    async with agentlocks.connect(backend_url_for("redis"), namespace=thread_id) as coord:
        saver = guard_checkpointer(InMemorySaver(), coord)
        parent = await saver.aput(config(thread_id, checkpoint_ns=""), empty_checkpoint(), {}, {})
        with pytest.raises(RuntimeError, match="async API"):
            saver.put(parent, empty_checkpoint(), {}, {})
        child = await asyncio.to_thread(saver.put, parent, empty_checkpoint(), {}, {})
        with pytest.raises(ConcurrentRunError):
            await asyncio.to_thread(saver.put, parent, empty_checkpoint(), {}, {})
        assert child["configurable"]["checkpoint_id"]


def test_methods_unknown_to_the_wrapper_are_delegated(monkeypatch: pytest.MonkeyPatch) -> None:
    """A saver method LangGraph adds later is delegated where the saver overrides it."""
    from agentlocks.langgraph._checkpointer import wrapper_class

    async def aflush(self: Any) -> str:
        raise NotImplementedError

    monkeypatch.setattr(BaseCheckpointSaver, "aflush", aflush, raising=False)

    class Flushing(InMemorySaver):
        async def aflush(self) -> str:
            return "flushed"

    assert overrides(wrapper_class(Flushing), "aflush")
    assert not overrides(wrapper_class(type("Plain", (InMemorySaver,), {})), "aflush")
    saver = guard_checkpointer(Flushing(), agentlocks.connect())
    assert asyncio.run(saver.aflush()) == "flushed"  # type: ignore[attr-defined]


async def test_head_never_written_is_replaced_once_stale(
    coord: Coordinator, thread_id: str
) -> None:
    """A head no saver holds (its writer died after the swap) stops blocking once stale."""
    from agentlocks.backends import HeadStore

    inner = InMemorySaver()
    saver = guard_checkpointer(inner, coord)
    graph = chat_graph(saver)
    await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    # What a process killed between its swap and its write leaves behind:
    store = coord.backend
    assert isinstance(store, HeadStore)
    ghost = empty_checkpoint()["id"]
    await store.swap_head(f"l:langgraph:{thread_id}", "", None, ghost, None, 3600)
    with pytest.raises(ConcurrentRunError):  # fresh: it may still be being written
        await graph.ainvoke({"messages": ["b"]}, config(thread_id))
    saver._heads.stale_after = 0.2  # type: ignore[attr-defined]
    await asyncio.sleep(0.3)
    await graph.ainvoke({"messages": ["c"]}, config(thread_id))
    assert await messages(graph, thread_id) == ["a", "re:a", "c", "re:c"]
    # A stale head that the saver does hold is a real conflict: it still stands.
    head = await inner.aget_tuple(config(thread_id))
    assert head is not None and head.parent_config is not None
    await asyncio.sleep(0.3)
    with pytest.raises(ConcurrentRunError):
        await saver.aput(head.parent_config, empty_checkpoint(), {}, {})


@pytest.mark.postgres
async def test_extras_of_the_saver_pass_through(thread_id: str) -> None:
    """Attributes the wrapper lacks (setup, conn) are the wrapped saver's."""
    async with AsyncPostgresSaver.from_conn_string(backend_url_for("postgresql")) as inner:
        saver = guard_checkpointer(inner, agentlocks.connect())
        await saver.setup()  # type: ignore[attr-defined]
        assert saver.conn is inner.conn  # type: ignore[attr-defined]
        graph = chat_graph(saver)
        await graph.ainvoke({"messages": ["a"]}, config(thread_id))
        assert await messages(graph, thread_id) == ["a", "re:a"]


class NoDeltaSaver(InMemorySaver):
    """A saver relying on the base class's delta-channel history (reads by checkpoint_id)."""

    get_delta_channel_history = BaseCheckpointSaver.get_delta_channel_history
    aget_delta_channel_history = BaseCheckpointSaver.aget_delta_channel_history


async def test_delta_history_walk_does_not_mark_forks(thread_id: str) -> None:
    """Ancestors read by the base delta-history walk are not forks: a stale parent is refused."""
    saver = guard_checkpointer(NoDeltaSaver(), agentlocks.connect())
    assert not overrides(type(saver), "aget_delta_channel_history")
    graph = chat_graph(saver)
    await graph.ainvoke({"messages": ["a"]}, config(thread_id))
    head = await saver.aget_tuple(config(thread_id))
    assert head is not None and head.parent_config is not None
    await saver.aget_delta_channel_history(config=head.config, channels=["messages"])
    saver.get_delta_channel_history(config=head.config, channels=["messages"])
    with pytest.raises(ConcurrentRunError):
        await saver.aput(head.parent_config, empty_checkpoint(), {}, {})
