"""A test backend: memory:// state, but behaving as a *remote* backend would.

``LossyBackend`` keeps the memory backend's queueing, shares its state between every
instance in one namespace (as coordinators sharing one server would), and declares
``remote = True``, so the coordinator runs its remote-only machinery against it: lease
renewal, tracking, shielded release, lost-lease cancellation. Tests then break leases on
purpose (``revoke``) or make the "server" unreachable (``fail_renewals``).

It is registered as the ``lossy://`` scheme through the public ``register_backend``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agentlocks._url import Settings
from agentlocks.backends import Grant, LostCallback
from agentlocks.backends._signals import LocalSignals
from agentlocks.backends.memory import MemoryBackend
from agentlocks.errors import BackendError


@dataclass
class _SharedState:
    entries: dict[str, Any] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    signals: LocalSignals = field(default_factory=LocalSignals)


class LossyBackend(MemoryBackend):
    """Memory queueing behind the remote-backend contract, with failure switches."""

    remote: ClassVar[bool] = True
    _shared: ClassVar[dict[str, _SharedState]] = {}

    def __init__(self, settings: Settings, on_lost: LostCallback) -> None:
        super().__init__(settings, on_lost)
        state = self._shared.setdefault(settings.namespace, _SharedState())
        self._entries = state.entries
        self._generations = state.generations
        self._tokens = state.tokens
        self._signals = state.signals  # signals reach every instance, as a server's would
        self.on_lost = on_lost
        self.renew_calls = 0
        self.fail_renewals = False
        self.fail_releases = False

    def revoke(self, grant: Grant, *, notify: bool = False) -> None:
        """Make ``grant`` vanish as a server-side expiry would; optionally push the news."""
        self.release_nowait(grant)
        if notify:
            self.on_lost(grant)

    async def renew(self, grants: Sequence[Grant]) -> Sequence[Grant]:
        self.renew_calls += 1
        if self.fail_renewals:
            raise BackendError("lossy:// is unreachable (fail_renewals)")
        return await super().renew(grants)

    async def release(self, grant: Grant) -> None:
        if self.fail_releases:
            raise BackendError("lossy:// is unreachable (fail_releases)")
        await super().release(grant)
