"""Background lease renewal for remote backends: one task per coordinator, batched.

Invariant: a tracked lease is either renewed on the server before its TTL runs out, or
marked lost no later than ``lease_ttl`` after the last renewal that was *sent* and
succeeded. Counting from the send time (not the reply) is conservative: the server's
expiry clock started after our send, so by the time we declare the lease lost locally, the
server has not yet handed it to anyone else unless it really expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING

from .backends._base import Backend, Grant
from .errors import AgentLocksError

if TYPE_CHECKING:
    from ._lease import Lease

logger = logging.getLogger("agentlocks")

#: Renew after this fraction of the shortest TTL among tracked leases.
RENEW_FRACTION = 1 / 3


class Renewer:
    """Tracks the live leases of one coordinator and keeps them alive."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        # grant -> (lease, monotonic time the last successful renewal was sent)
        self._tracked: dict[Grant, tuple[Lease, float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._due = math.inf  # monotonic time the task sleeps toward
        self._retry_at = 0.0  # after a failed renewal, no new attempt before this
        self._interval = 1.0  # the last renewal interval (seconds), also the idle linger

    def __len__(self) -> int:
        return len(self._tracked)

    def track(self, lease: Lease, grant: Grant) -> None:
        """Start renewing ``grant``; start the renewal task if it is not running."""
        self._tracked[grant] = (lease, grant.acquired_at)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="agentlocks-lease-renewal"
            )
        elif grant.acquired_at + grant.lease_ttl * RENEW_FRACTION < self._due:
            # A shorter TTL needs an earlier tick than the one the task sleeps toward.
            self._wakeup.set()

    def untrack(self, grant: Grant) -> None:
        """Stop renewing ``grant`` (it is being released)."""
        self._tracked.pop(grant, None)

    def lost(self, grant: Grant) -> None:
        """The backend learnt on its own that ``grant`` is gone: fail its lease loudly."""
        entry = self._tracked.pop(grant, None)
        if entry is not None:
            logger.warning("lease lost: key=%r token=%s", entry[0].key, grant.token)
            entry[0]._mark_lost()

    async def aclose(self) -> None:
        """Stop the renewal task; leases stay tracked until released."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        idle = False
        while True:
            now = time.monotonic()
            if self._tracked:
                idle = False
                self._interval = min(g.lease_ttl for g in self._tracked) * RENEW_FRACTION
                # Renew when the lease renewed (or granted) longest ago is due; the batch
                # renews every other lease with it.
                due = min(
                    sent + g.lease_ttl * RENEW_FRACTION for g, (_, sent) in self._tracked.items()
                )
                self._due = max(due, self._retry_at)
            elif idle:
                self._due = math.inf
                return  # nothing to renew for a whole interval; track() starts a new task
            else:
                idle = True  # linger one interval, so steady traffic keeps this task
                self._due = now + self._interval
            if self._due > now:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._due - now)
                continue
            await self._renew_all()

    async def _renew_all(self) -> None:
        grants = list(self._tracked)
        if not grants:
            return
        sent = time.monotonic()
        try:
            gone = await self._backend.renew(grants)
        except AgentLocksError as exc:
            # Unreachable server: keep every lease whose TTL may still be running on the
            # server; the others may have been granted to someone else by now.
            logger.warning("lease renewal failed: %s", exc)
            now = time.monotonic()
            self._retry_at = now + self._interval
            for grant in grants:
                entry = self._tracked.get(grant)
                if entry is not None and now - entry[1] >= grant.lease_ttl:
                    self.lost(grant)
            return
        for grant in grants:
            entry = self._tracked.get(grant)
            if entry is not None:  # not released meanwhile
                self._tracked[grant] = (entry[0], sent)
        for grant in gone:
            self.lost(grant)
