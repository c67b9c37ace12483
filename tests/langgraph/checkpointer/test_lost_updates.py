"""Double-texting one thread: the silent loss without agentlocks, and guard_checkpointer's fix."""

from __future__ import annotations

from typing import Any

import pytest

from agentlocks import ConcurrentRunError, Coordinator
from agentlocks.langgraph._checkpointer import guard_checkpointer
from tests.langgraph.checkpointer._graphs import chat_graph, concurrent_turns, messages
from tests.langgraph.checkpointer.conftest import MakeSaver

DURABILITIES = ["sync", "async", "exit"]


async def test_concurrent_runs_lose_messages_without_agentlocks(
    make_saver: MakeSaver, saver_kind: str, thread_id: str
) -> None:
    """The bug: 10 concurrent turns on one thread keep fewer than 20 messages, and none raises."""
    async with make_saver(saver_kind) as saver:
        graph = chat_graph(saver)
        results = await concurrent_turns(graph, thread_id, 10)
        assert not [r for r in results if isinstance(r, BaseException)]
        kept = await messages(graph, thread_id)
        assert len(kept) < 20, kept


def _check_no_silent_loss(results: list[Any], kept: list[str]) -> list[int]:
    """Every run either returned, and kept its turn, or raised ConcurrentRunError."""
    winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, ConcurrentRunError) for r in losers), losers
    assert winners, "at least one run must win"
    expected = {m for i in winners for m in (f"u{i}", f"re:u{i}")}
    assert sorted(kept) == sorted(expected), (winners, kept)
    assert len(kept) == len(set(kept))
    return winners


@pytest.mark.parametrize("durability", DURABILITIES)
async def test_guarded_saver_refuses_lost_updates(
    make_saver: MakeSaver, saver_kind: str, coord: Coordinator, thread_id: str, durability: str
) -> None:
    """The fix alone: all runs but the winners raise ConcurrentRunError; none is lost silently."""
    async with make_saver(saver_kind) as inner:
        graph = chat_graph(guard_checkpointer(inner, coord))
        results = await concurrent_turns(graph, thread_id, 10, durability=durability)
        winners = _check_no_silent_loss(results, await messages(graph, thread_id))
        assert len(winners) < 10
        # The thread is not wedged: the next turn goes through and keeps everything.
        await graph.ainvoke({"messages": ["next"]}, {"configurable": {"thread_id": thread_id}})
        assert (await messages(graph, thread_id))[-2:] == ["next", "re:next"]
        assert len(await messages(graph, thread_id)) == 2 * len(winners) + 2


@pytest.mark.parametrize("durability", DURABILITIES)
async def test_guarded_saver_on_an_existing_thread(
    make_saver: MakeSaver, coord: Coordinator, thread_id: str, durability: str
) -> None:
    """A thread written before the wrapper existed: the race on it is refused too."""
    async with make_saver("memory") as inner:
        cfg = {"configurable": {"thread_id": thread_id}}
        await chat_graph(inner).ainvoke({"messages": ["old"]}, cfg)
        graph = chat_graph(guard_checkpointer(inner, coord))
        results = await concurrent_turns(graph, thread_id, 10, durability=durability)
        kept = await messages(graph, thread_id)
        assert kept[:2] == ["old", "re:old"]
        _check_no_silent_loss(results, kept[2:])
