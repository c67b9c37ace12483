"""Coordinators a test makes as it goes, all closed when it ends (the ``connect`` fixture)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import agentlocks
from agentlocks import Coordinator


class Connect(Protocol):
    """Factory fixture: a coordinator (on the test's backend by default), closed after it."""

    def __call__(self, url: str | None = None, **options: Any) -> Coordinator: ...


@contextlib.asynccontextmanager
async def coordinators(backend_url: str, **defaults: Any) -> AsyncIterator[Connect]:
    """Yield a :class:`Connect` on ``backend_url`` with ``defaults``; close what it made on exit."""
    made: list[Coordinator] = []

    def make(url: str | None = None, **options: Any) -> Coordinator:
        coord = agentlocks.connect(url or backend_url, **{**defaults, **options})
        made.append(coord)
        return coord

    try:
        yield make
    finally:
        for coord in made:
            await coord.aclose()
