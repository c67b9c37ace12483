"""A test backend: memory:// state, but behaving as a server-backed backend would.

``LossyBackend`` keeps the memory backend's queueing, shares its state between every
instance in one namespace (``shared_state = True``, as coordinators sharing one server
would), and declares ``leases_expire = True`` and ``release_finishes = False``, so the
coordinator runs its machinery for expiring leases against it: lease renewal, tracking,
shielded release, lost-lease cancellation. Tests then break leases on
purpose (``revoke``) or make the "server" unreachable (``fail_renewals``).

It is registered as the ``lossy://`` scheme through the public ``register_backend``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agentlocks._tasks import TaskSupervisor
from agentlocks._url import Settings
from agentlocks.backends import Grant, LostCallback
from agentlocks.backends._memory_heads import HeadTable
from agentlocks.backends._signals import LocalSignals
from agentlocks.backends.memory import MemoryBackend
from agentlocks.errors import BackendError


@dataclass
class _SharedState:
    entries: dict[str, Any] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    heads: HeadTable = field(default_factory=HeadTable)
    tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    signals: LocalSignals = field(default_factory=LocalSignals)


class LossyBackend(MemoryBackend):
    """Memory queueing behind the contract of a server-backed backend, with failure switches."""

    leases_expire: ClassVar[bool] = True
    shared_state: ClassVar[bool] = True
    release_finishes: ClassVar[bool] = False  # released under finish(), as a server's would be
    _shared: ClassVar[dict[str, _SharedState]] = {}

    def __init__(self, settings: Settings, on_lost: LostCallback, tasks: TaskSupervisor) -> None:
        super().__init__(settings, on_lost, tasks)
        state = self._shared.setdefault(settings.namespace, _SharedState())
        self._entries = state.entries
        self._generations = state.generations
        self._heads = state.heads
        self._tokens = state.tokens
        self._signals = state.signals  # signals reach every instance, as a server's would
        self.on_lost = on_lost
        self.renew_calls = 0
        self.fail_renewals = False
        self.hang_renewals = False  # renew() never answers: a silent partition
        self.fail_releases = False
        self._granted: set[Grant[None]] = set()  # what aclose() ends, as a server would

    def revoke(self, grant: Grant[None], *, notify: bool = False) -> None:
        """Make ``grant`` vanish as a server-side expiry would; optionally push the news."""
        self.release_nowait(grant)
        if notify:
            self.on_lost(grant)

    async def renew(self, grants: Sequence[Grant[None]]) -> Sequence[Grant[None]]:
        self.renew_calls += 1
        if self.fail_renewals:
            raise BackendError("lossy:// is unreachable (fail_renewals)")
        if self.hang_renewals:
            await asyncio.Event().wait()  # no answer, no error: only a deadline ends this
        return await super().renew(grants)

    async def acquire(self, resource: str, **request: Any) -> Grant[None]:
        grant = await super().acquire(resource, **request)
        self._granted.add(grant)
        return grant

    async def release(self, grant: Grant[None]) -> bool:
        if self.fail_releases:
            raise BackendError("lossy:// is unreachable (fail_releases)")
        self._granted.discard(grant)
        return await super().release(grant)

    async def aclose(self) -> None:
        # A server-backed backend ends its grants on the server when it closes: the shared state
        # is the "server" here, so other coordinators' waiters are handed the keys.
        await super().aclose()
        for grant in list(self._granted):
            self.release_nowait(grant)
        self._granted.clear()
