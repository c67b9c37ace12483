"""The coordinator's task supervisor and the cleanup helper that outlives cancellation."""

from __future__ import annotations

import asyncio
import logging

import pytest

import agentlocks
from agentlocks._tasks import TaskSupervisor, finish


async def test_finish_runs_to_the_end_under_repeated_cancels() -> None:
    """A cleanup step finishes although its caller is cancelled three times meanwhile."""
    done = asyncio.Event()

    async def cleanup() -> None:
        for _ in range(5):
            await asyncio.sleep(0.01)
        done.set()

    task = asyncio.create_task(finish(cleanup()))
    for _ in range(3):
        await asyncio.sleep(0.005)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done.is_set()  # the step ran to its end before the cancellation surfaced


async def test_finish_returns_the_result_and_raises_the_error() -> None:
    """Without a cancellation, finish() is the step: its result or its exception."""

    async def value() -> int:
        return 7

    async def broken() -> None:
        raise ValueError("boom")

    assert await finish(value()) == 7
    with pytest.raises(ValueError, match="boom"):
        await finish(broken())


async def test_supervisor_logs_failures_with_key_and_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing background task is logged on `agentlocks` with what it was about."""
    tasks = TaskSupervisor()

    async def broken() -> None:
        raise RuntimeError("renewal exploded")

    with caplog.at_level(logging.ERROR, logger="agentlocks"):
        task = tasks.spawn(broken(), name="lease renewal", key="thread:1", token=42)
        await asyncio.wait([task])
        await asyncio.sleep(0)
    (record,) = [r for r in caplog.records if r.name == "agentlocks"]
    assert "lease renewal key='thread:1' token=42" in record.getMessage()
    assert "renewal exploded" in record.getMessage()
    assert len(tasks) == 0


async def test_supervisor_aclose_cancels_and_awaits_every_task() -> None:
    """aclose() ends every running task, waits for them, and refuses new ones."""
    tasks = TaskSupervisor()
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    for name in ("a", "b", "c"):
        tasks.spawn(forever(name), name=name)
    await asyncio.sleep(0)
    await tasks.aclose()
    assert sorted(ended) == ["a", "b", "c"] and len(tasks) == 0 and tasks.closed

    async def late() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="closed"):
        tasks.spawn(late(), name="late")


async def test_coordinator_aclose_leaves_no_background_task() -> None:
    """After aclose() the coordinator's supervisor runs nothing (lossy:// renews leases)."""
    agentlocks.register_backend("lossy", "tests.support.lossy_backend:LossyBackend", replace=True)
    coord = agentlocks.connect("lossy://?namespace=tasks-test")
    lease = await coord.acquire("k", lease_ttl=0.3)
    assert len(coord._tasks) == 1  # the renewal task
    await coord.aclose()
    assert len(coord._tasks) == 0 and lease.lost
