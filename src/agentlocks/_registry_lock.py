"""``coord.registry(name)``: reader/writer locking plus a published generation.

Readers hold the lock named like the registry shared, writers exclusive (FIFO, so writers
never starve): it is exactly ``coord.acquire(name, shared=...)``, so ``inspect(name)`` shows
its holders.
The generation lives in the backend, so every replica sees it; a writer publishes
``current + 1`` only when its block exits without error and its lease is still held (the
publish is fenced by the writer's grant), and publishing never lowers it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .errors import LeaseLost

if TYPE_CHECKING:
    from .coordinator import Coordinator


class Registry:
    """Shared state that many runs read and a few writers replace, across replicas.

    Example:
        >>> import agentlocks, anyio
        >>> async def main() -> None:
        ...     async with agentlocks.connect() as coord:
        ...         tools = coord.registry("tool-registry")
        ...         async with tools.write() as version:
        ...             print("publishing", version)
        ...         async with tools.read() as version:
        ...             print("reading", version)
        >>> anyio.run(main)
        publishing 1
        reading 1
    """

    __slots__ = ("_coordinator", "_name")

    def __init__(self, coordinator: Coordinator, name: str) -> None:
        self._coordinator = coordinator
        self._name = name

    @property
    def name(self) -> str:
        """The registry's name."""
        return self._name

    def __repr__(self) -> str:
        return f"Registry({self._name!r})"

    async def version(self) -> int:
        """The generation published now (0 before the first write); one round trip."""
        return await self._coordinator.backend.read_generation(self._name)

    @asynccontextmanager
    async def read(self, *, timeout: float | None = None) -> AsyncIterator[int]:
        """Hold the registry shared; yields the generation published now."""
        coord = self._coordinator
        async with coord.acquire(self._name, shared=True, timeout=timeout):
            yield await coord.backend.read_generation(self._name)

    @asynccontextmanager
    async def write(self, *, timeout: float | None = None) -> AsyncIterator[int]:
        """Hold the registry exclusively; yields the generation this write will publish.

        The generation is published only if the block exits without an exception.
        """
        coord = self._coordinator
        async with coord.acquire(self._name, timeout=timeout) as lease:
            generation = await coord.backend.read_generation(self._name) + 1
            yield generation
            # Still under the exclusive lease: no other writer can publish between our read
            # and this write. The publish is fenced by our grant in one atomic step on the
            # backend, so a writer whose lease was lost after its block ended (or while
            # this call travelled) publishes nothing: there is no check-then-write window.
            backend = coord.backend
            if not await backend.publish_generation(self._name, generation, lease._held_grant()):
                # The release on the way out reports the loss too (lease.lost turns True).
                raise LeaseLost(
                    f"the lease on registry {self._name!r} was lost: generation "
                    f"{generation} was not published",
                    key=self._name,
                )
