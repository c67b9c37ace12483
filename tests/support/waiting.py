"""Polling a condition until it holds: the one way tests wait for state they cannot await.

A test that needs "N requests are queued" (or any other backend state) before it acts polls
:func:`until_waiting` / :func:`until`. Each poll is bounded: a state that never comes fails
the test with ``TimeoutError`` well within pytest's timeout, instead of hanging it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from agentlocks import Coordinator

#: Default bound of a poll, in seconds: far above any expected wait, far below the test timeout.
NO_HANG = 20.0

#: Seconds between two polls.
INTERVAL = 0.005


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = NO_HANG,
    interval: float = INTERVAL,
) -> None:
    """Poll ``condition()`` (sync or async) until it is true; ``TimeoutError`` after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)


async def until_waiting(
    coord: Coordinator,
    key: str,
    count: int,
    *,
    semaphore: bool = False,
    at_least: bool = False,
    timeout: float = NO_HANG,
    interval: float = INTERVAL,
) -> None:
    """Wait until exactly ``count`` (or, with ``at_least``, ``count`` or more) wait on ``key``.

    ``coord.inspect`` sees every process's requests on a remote backend, so ``coord`` may be
    any coordinator on the namespace, not only the one whose requests are counted.
    """

    async def reached() -> bool:
        waiting = (await coord.inspect(key, semaphore=semaphore)).waiting
        return waiting >= count if at_least else waiting == count

    await until(reached, timeout, interval)
