"""Fixtures and helpers shared by every part of the conformance suite."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar

import pytest
import pytest_asyncio

import agentlocks
from agentlocks import Coordinator, Lease

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds any one conformance test may run before it fails as a deadlock.
TEST_DEADLINE = 45.0


def conformance(
    fn: Callable[P, Coroutine[Any, Any, None]],
) -> Callable[P, Coroutine[Any, Any, None]]:
    """Mark an async suite test for pytest-asyncio and fail it if it outlives the deadline."""

    @functools.wraps(fn)
    async def bounded(*args: P.args, **kwargs: P.kwargs) -> None:
        deadline = asyncio.timeout(TEST_DEADLINE)
        try:
            async with deadline:
                await fn(*args, **kwargs)
        except TimeoutError as exc:
            if deadline.expired():
                raise AssertionError(
                    f"{fn.__name__} did not finish within {TEST_DEADLINE} s (deadlock?)"
                ) from exc
            raise

    marked: Callable[P, Coroutine[Any, Any, None]] = pytest.mark.asyncio(bounded)
    return marked


class Connect(Protocol):
    """Factory fixture: a new coordinator on the suite's URL and (by default) namespace."""

    def __call__(self, **options: Any) -> Awaitable[Coordinator]: ...


class SuiteHarness:
    """Fixtures every suite test uses. Subclasses must provide ``backend_url``."""

    @pytest.fixture
    def backend_url(self) -> str:
        """The URL under test; a subclass overrides this fixture."""
        pytest.fail("provide a `backend_url` fixture returning the URL of the backend under test")

    @pytest.fixture
    def namespace(self) -> str:
        """A namespace no other test uses, so no test needs a flushed server."""
        return f"conformance-{uuid.uuid4().hex[:12]}"

    @pytest_asyncio.fixture
    async def connect(self, backend_url: str, namespace: str) -> AsyncIterator[Connect]:
        """Make coordinators on the URL under test; all are closed after the test."""
        made: list[Coordinator] = []

        async def make(**options: Any) -> Coordinator:
            options.setdefault("namespace", namespace)
            coord = agentlocks.connect(backend_url, **options)
            made.append(coord)
            return coord

        yield make
        for coord in made:
            await coord.aclose()

    @pytest_asyncio.fixture
    async def coord(self, connect: Connect) -> Coordinator:
        """One coordinator on the URL under test, in a fresh namespace."""
        return await connect()

    # -- hooks a backend's subclass may override -----------------------------------------------

    async def break_lease(self, coord: Coordinator, lease: Lease) -> None:
        """Make ``lease``'s grant vanish on the server as a crash or expiry would.

        Remote backends override this (delete the key, terminate the session) to run the
        lost-lease tests; the default skips them.
        """
        pytest.skip("this backend's suite does not provide break_lease()")

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def start(request: Lease) -> asyncio.Task[Lease]:
        """Start waiting for ``request`` in a new task; the task's result is the lease."""

        async def wait_for_it() -> Lease:
            return await request

        return asyncio.create_task(wait_for_it())

    @staticmethod
    async def settle(
        coord: Coordinator, key: str, waiting: int, *, semaphore: bool = False
    ) -> None:
        """Wait until ``waiting`` requests are queued on ``key`` (bounded by the test deadline)."""
        while (await coord.inspect(key, semaphore=semaphore)).waiting != waiting:
            await asyncio.sleep(0.001)

    @staticmethod
    async def assert_idle(coord: Coordinator, key: str, *, semaphore: bool = False) -> None:
        """Assert ``key`` has no holder and no waiter."""
        info = await coord.inspect(key, semaphore=semaphore)
        assert info.holders == () and info.waiting == 0, f"{key!r} is not idle: {info}"
