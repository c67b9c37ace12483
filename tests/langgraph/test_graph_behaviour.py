"""guard_graph's semantics: strategies, FIFO, state updates, copies, nesting, batches."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.runtime import RunControl, Runtime
from langgraph.types import Command, interrupt

from agentlocks import AcquireTimeout, ConfigError, Coordinator, QueueFull, ThreadBusy
from agentlocks.langgraph import GuardedGraph, guard_graph
from tests.langgraph._graphs import chat_graph, user
from tests.langgraph.test_graph import cfg, messages_of

SLOW = 0.3  # seconds the slow graph's node takes


async def is_held(coord: Coordinator, thread_id: str) -> bool:
    """Whether the thread's lock is held now."""
    return (await coord.inspect(f"langgraph:{thread_id}")).held


async def until_held(coord: Coordinator, thread_id: str, held: bool = True) -> None:
    """Wait (at most 5 s) until the thread's lock is held (or free)."""
    for _ in range(500):
        if await is_held(coord, thread_id) == held:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"lock of {thread_id} never became {'held' if held else 'free'}")


async def test_enqueue_is_fifo(coord: Coordinator, thread_id: str) -> None:
    """Runs queued on a thread run in the order they arrived."""
    graph = guard_graph(chat_graph(InMemorySaver(), delay=0.05), coord)
    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(graph.ainvoke(user(i), cfg(thread_id))))
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    humans = [m.content for m in await messages_of(graph, thread_id)][::2]
    assert humans == [f"msg-{i}" for i in range(5)]


async def test_reject_raises_thread_busy(coord: Coordinator, thread_id: str) -> None:
    """on_busy="reject": a run on a running thread raises ThreadBusy with the thread's key."""
    graph = guard_graph(chat_graph(InMemorySaver(), delay=SLOW), coord, on_busy="reject")
    first = asyncio.create_task(graph.ainvoke(user(0), cfg(thread_id)))
    await until_held(coord, thread_id)
    with pytest.raises(ThreadBusy) as busy:
        await graph.ainvoke(user(1), cfg(thread_id))
    assert busy.value.key == f"langgraph:{thread_id}"
    with pytest.raises(ThreadBusy):
        await graph.acquire_thread(thread_id)
    await first
    assert len(await messages_of(graph, thread_id)) == 2


async def test_timeout_and_max_waiting(memory_coord: Coordinator, thread_id: str) -> None:
    """timeout -> AcquireTimeout; max_waiting -> QueueFull; both leave the thread usable."""
    slow = chat_graph(InMemorySaver(), delay=SLOW)
    graph = guard_graph(slow, memory_coord, timeout=0.05, max_waiting=1)
    first = asyncio.create_task(graph.ainvoke(user(0), cfg(thread_id)))
    await until_held(memory_coord, thread_id)
    with pytest.raises(AcquireTimeout):
        await graph.ainvoke(user(1), cfg(thread_id))
    patient = guard_graph(slow, memory_coord, max_waiting=1)
    second = asyncio.create_task(patient.ainvoke(user(2), cfg(thread_id)))
    await asyncio.sleep(0.02)
    with pytest.raises(QueueFull):
        await patient.ainvoke(user(3), cfg(thread_id))
    await asyncio.gather(first, second)
    assert [m.content for m in await messages_of(graph, thread_id)][::2] == ["msg-0", "msg-2"]


async def test_aupdate_state_waits_for_the_running_run(coord: Coordinator, thread_id: str) -> None:
    """aupdate_state during a run waits for it: neither the run nor the update is lost."""
    graph = guard_graph(chat_graph(InMemorySaver(), delay=SLOW), coord)
    run = asyncio.create_task(graph.ainvoke(user(0), cfg(thread_id)))
    await until_held(coord, thread_id)
    update = asyncio.create_task(
        graph.aupdate_state(cfg(thread_id), {"messages": [HumanMessage("edit", id="edit")]})
    )
    await asyncio.sleep(0.1)
    assert not update.done()
    await asyncio.gather(run, update)
    contents = [m.content for m in await messages_of(graph, thread_id)]
    assert contents == ["msg-0", "reply to msg-0", "edit"]
    assert not await is_held(coord, thread_id)


async def test_copies_stay_guarded(memory_coord: Coordinator, thread_id: str) -> None:
    """with_config, copy, with_retry and bind return runnables whose runs still take the lock."""
    graph = guard_graph(chat_graph(InMemorySaver()), memory_coord)
    bound = graph.with_config(configurable={"thread_id": thread_id})
    assert isinstance(bound, GuardedGraph) and isinstance(graph.copy(), GuardedGraph)
    variants = [bound, graph.copy(), graph.with_retry(), graph.bind(), graph]
    runs = [
        variant.ainvoke(user(10 * n + i), None if variant is bound else cfg(thread_id))
        for n, variant in enumerate(variants)
        for i in range(3)
    ]
    await asyncio.gather(*runs)
    assert len(await messages_of(graph, thread_id)) == 2 * len(runs)


async def test_max_concurrent_runs_caps_runs_across_threads(memory_coord: Coordinator) -> None:
    """max_concurrent_runs=2: at most two runs at once, over any number of threads."""
    running = peak = 0

    async def reply(state: MessagesState) -> dict[str, list[BaseMessage]]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.03)
        running -= 1
        return {"messages": [AIMessage("ok")]}

    builder = StateGraph(MessagesState)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    graph = guard_graph(
        builder.compile(checkpointer=InMemorySaver()), memory_coord, max_concurrent_runs=2
    )
    await asyncio.gather(*(graph.ainvoke(user(i), cfg(f"cap-{i}")) for i in range(6)))
    assert peak == 2


async def test_abatch_items_are_separate_runs(memory_coord: Coordinator) -> None:
    """abatch: items on different threads run at once, each with its own RunControl."""
    controls: list[RunControl] = []
    running = peak = 0

    async def reply(state: MessagesState, runtime: Runtime[Any]) -> dict[str, Any]:
        nonlocal running, peak
        assert runtime.control is not None
        controls.append(runtime.control)
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return {"messages": [AIMessage("ok")]}

    builder = StateGraph(MessagesState)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    graph = guard_graph(builder.compile(checkpointer=InMemorySaver()), memory_coord)
    shared = RunControl()
    await graph.abatch([user(0), user(1)], [cfg("batch-a"), cfg("batch-b")], control=shared)
    assert peak == 2
    assert len({id(c) for c in controls}) == 2 and shared not in controls
    # The caller's control still reaches every item: drained, none of them runs a step.
    shared.request_drain("test")
    results = await graph.abatch(
        [user(2), user(3)], [cfg("batch-a"), cfg("batch-b")], control=shared,
        return_exceptions=True,
    )  # fmt: skip
    assert all(type(r).__name__ == "GraphDrained" for r in results)
    # Two items on one thread: each took the lock in turn; both turns are kept.
    await graph.abatch([user(4), user(5)], cfg("batch-c"))
    assert len(await messages_of(graph, "batch-c")) == 4


async def test_nested_subgraph_and_reentry_pass_through(
    memory_coord: Coordinator, thread_id: str
) -> None:
    """A guarded subgraph and a node re-entering the same thread do not wait for themselves."""
    inner = guard_graph(chat_graph(None), memory_coord, timeout=1)
    helper = guard_graph(chat_graph(InMemorySaver()), memory_coord, timeout=1)

    async def reenter(state: MessagesState) -> dict[str, list[BaseMessage]]:
        # An explicit thread_id drops the inherited config: only the context says "held".
        await helper.ainvoke(user(7), cfg(thread_id))
        return {"messages": [AIMessage("re-entered", id="re")]}

    builder = StateGraph(MessagesState)
    builder.add_node("sub", inner)
    builder.add_node("reenter", reenter)
    builder.add_edge(START, "sub")
    builder.add_edge("sub", "reenter")
    builder.add_edge("reenter", END)
    graph = guard_graph(builder.compile(checkpointer=InMemorySaver()), memory_coord, timeout=1)
    await graph.ainvoke(user(0), cfg(thread_id))
    contents = [m.content for m in await messages_of(graph, thread_id)]
    assert contents == ["msg-0", "reply to msg-0", "re-entered"]
    assert [m.content for m in await messages_of(helper, thread_id)] == ["msg-7", "reply to msg-7"]


async def test_interrupt_frees_the_thread_while_waiting_for_a_human(
    coord: Coordinator, thread_id: str
) -> None:
    """A run waiting in interrupt() holds no lock; the resume takes it again."""
    seen: list[bool] = []

    async def ask(state: MessagesState) -> dict[str, list[BaseMessage]]:
        answer = interrupt("approve?")
        seen.append(await is_held(coord, thread_id))
        return {"messages": [AIMessage(f"human said {answer}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    graph = guard_graph(builder.compile(checkpointer=InMemorySaver()), coord)
    result = await graph.ainvoke(user(0), cfg(thread_id))
    assert result["__interrupt__"][0].value == "approve?"
    assert not await is_held(coord, thread_id)
    result = await graph.ainvoke(Command(resume="yes"), cfg(thread_id))
    assert result["messages"][-1].content == "human said yes"
    assert seen == [True] and not await is_held(coord, thread_id)


async def test_lent_checkpointer_warns_once(memory_coord: Coordinator, thread_id: str) -> None:
    """A checkpointer lent through the config (as servers do) is reported, once per graph."""
    graph = guard_graph(chat_graph(InMemorySaver()), memory_coord)
    lent = {"configurable": {"thread_id": thread_id, "__pregel_checkpointer": InMemorySaver()}}
    with pytest.warns(RuntimeWarning, match="bypasses the graph's own checkpointer"):
        await graph.ainvoke(user(0), lent)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await graph.ainvoke(user(1), lent)


async def test_sync_entry_points_are_refused(memory_coord: Coordinator, thread_id: str) -> None:
    """invoke/stream/update_state at the root raise a clear error instead of running unlocked."""
    graph = guard_graph(chat_graph(InMemorySaver()), memory_coord)
    with pytest.raises(RuntimeError, match="asyncio-only"):
        graph.invoke(user(0), cfg(thread_id))
    with pytest.raises(RuntimeError, match="asyncio-only"):
        graph.update_state(cfg(thread_id), {"messages": []})
    assert await messages_of(graph, thread_id) == []


async def test_reentry_on_another_thread_takes_that_threads_lock(
    memory_coord: Coordinator,
) -> None:
    """From inside a run on thread "x:1", a call on thread "1" is not mistaken for re-entry."""
    seen: list[bool] = []

    async def call_other(state: MessagesState) -> dict[str, list[BaseMessage]]:
        async def probe(inner: MessagesState) -> dict[str, list[BaseMessage]]:
            seen.append(await is_held(memory_coord, "1"))
            return {"messages": [AIMessage("probed")]}

        builder = StateGraph(MessagesState)
        builder.add_node("probe", probe)
        builder.add_edge(START, "probe")
        other = guard_graph(builder.compile(checkpointer=InMemorySaver()), memory_coord)
        await other.ainvoke(user(1), cfg("1"))
        return {"messages": [AIMessage("called")]}

    builder = StateGraph(MessagesState)
    builder.add_node("call_other", call_other)
    builder.add_edge(START, "call_other")
    graph = guard_graph(builder.compile(checkpointer=InMemorySaver()), memory_coord)
    await graph.ainvoke(user(0), cfg("x:1"))
    assert seen == [True]


async def test_abulk_update_state_and_astream_reject(
    memory_coord: Coordinator, thread_id: str
) -> None:
    """abulk_update_state waits like aupdate_state; astream on a busy thread rejects too."""
    from langgraph.types import StateUpdate

    graph = guard_graph(chat_graph(InMemorySaver(), delay=SLOW), memory_coord)
    run = asyncio.create_task(graph.ainvoke(user(0), cfg(thread_id)))
    await until_held(memory_coord, thread_id)
    update = asyncio.create_task(
        graph.abulk_update_state(
            cfg(thread_id), [[StateUpdate({"messages": [HumanMessage("bulk", id="bulk")]})]]
        )
    )
    await asyncio.sleep(0.1)
    assert not update.done()
    rejecting = guard_graph(chat_graph(InMemorySaver()), memory_coord, on_busy="reject")
    with pytest.raises(ThreadBusy):
        async for _ in rejecting.astream(user(1), cfg(thread_id)):
            pass
    await asyncio.gather(run, update)
    assert [m.content for m in await messages_of(graph, thread_id)][-1] == "bulk"


async def test_acquire_thread_holds_a_run_slot_until_the_stream_ends(
    memory_coord: Coordinator, thread_id: str
) -> None:
    """With max_concurrent_runs, acquire_thread also takes a slot; stream_with gives it back."""
    graph = guard_graph(
        chat_graph(InMemorySaver()), memory_coord, max_concurrent_runs=1, timeout=0.1
    )
    lease = await graph.acquire_thread(thread_id)
    with pytest.raises(AcquireTimeout):  # the only slot is taken, by the acquired thread
        await graph.ainvoke(user(1), cfg("other-thread"))
    assert not await is_held(memory_coord, "other-thread")  # its thread lock was let go
    async for _ in graph.stream_with(lease, user(0), cfg(thread_id)):
        pass
    await graph.ainvoke(user(1), cfg("other-thread"))
    spare = await graph.acquire_thread(thread_id)
    await graph.release_thread(spare)
    assert not await is_held(memory_coord, thread_id)


async def test_a_thread_lease_released_directly_gives_its_run_slot_back(
    memory_coord: Coordinator, thread_id: str
) -> None:
    """An acquire_thread lease ended by lease.release() leaves no run slot taken for ever."""
    graph = guard_graph(
        chat_graph(InMemorySaver()), memory_coord, max_concurrent_runs=1, timeout=0.5
    )
    lease = await graph.acquire_thread(thread_id)
    await lease.release()  # not release_thread: the guard still has its slot
    await graph.ainvoke(user(1), cfg("other-thread"))  # the slot came back, no timeout
    assert not graph._agentlocks_guard.slots  # nor a record of it


async def test_bad_options_and_leases_are_refused(memory_coord: Coordinator) -> None:
    """Bad options are ConfigError before any I/O; stream_with wants its thread's held lease."""
    compiled = chat_graph(InMemorySaver())
    for options in (
        {"on_busy": "rollback"},
        {"timeout": -1},
        {"max_concurrent_runs": 0},
        {"max_waiting": -1},
        {"drain_timeout": -1},
    ):
        with pytest.raises(ConfigError):
            guard_graph(compiled, memory_coord, **options)
    with pytest.raises(ConfigError, match="compiled LangGraph graph"):
        guard_graph(object(), memory_coord)  # type: ignore[arg-type]
    graph = guard_graph(compiled, memory_coord)
    with pytest.raises(ConfigError, match="already guarded"):
        guard_graph(graph, memory_coord)
    lease = await graph.acquire_thread("a")
    with pytest.raises(ValueError, match="held lease of the config's thread 'b'"):
        graph.stream_with(lease, user(0), cfg("b"))
    await graph.release_thread(lease)
    with pytest.raises(ValueError, match="held lease"):
        graph.stream_with(lease, user(0), cfg("a"))


def test_missing_langgraph_is_an_actionable_config_error() -> None:
    """Without LangGraph, importing agentlocks.langgraph names the extra to install."""
    code = (
        "import sys; sys.modules['langgraph'] = None\n"
        "try:\n    import agentlocks.langgraph\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ConfigError ")
    assert "pip install 'agentlocks[langgraph]'" in out.stdout
