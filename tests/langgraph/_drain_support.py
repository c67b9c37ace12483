"""Helpers of the drain tests: coordinators per backend, an observable RunControl."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from langgraph.runtime import RunControl

import agentlocks
from agentlocks import Coordinator
from tests.conftest import backend_url_for

BACKEND_NAMES = ("memory", "redis", "postgresql")


class Control(RunControl):
    """A RunControl that also sets an event when a drain is requested (for waiting on)."""

    __slots__ = ("drained",)

    def __init__(self) -> None:
        super().__init__()
        self.drained = asyncio.Event()

    def request_drain(self, reason: str = "shutdown") -> None:
        super().request_drain(reason)
        self.drained.set()


class Cancels:
    """A ``cancel`` callback that counts its calls (and sets ``called``)."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = asyncio.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.called.set()


@asynccontextmanager
async def coordinators(name: str) -> AsyncIterator[Callable[[], Coordinator]]:
    """Yield a factory of coordinators on backend ``name`` sharing one fresh namespace.

    On memory:// every call returns the same coordinator (there is no server to share);
    on Redis and PostgreSQL each call is a new coordinator, with connections of its own,
    as another process would have.
    """
    url = backend_url_for(name)
    namespace = f"drain-{uuid.uuid4().hex[:12]}"
    made: list[Coordinator] = []

    def make() -> Coordinator:
        if name == "memory" and made:
            return made[0]
        coord = agentlocks.connect(url, namespace=namespace)
        made.append(coord)
        return coord

    try:
        yield make
    finally:
        for coord in made:
            await coord.aclose()
