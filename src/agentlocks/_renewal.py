"""Background lease renewal for remote backends: one task per coordinator, batched.

The lease arithmetic (``docs/locks.md``, "How a lost lease is decided"):

* A grant's lease is *confirmed* at the monotonic time a request that the server answered
  was **sent**: the grant itself, then every renewal the server confirmed. The server's
  expiry clock started after that send, so the server cannot give the key away earlier than
  ``confirmed + lease_ttl``.
* Renewal is due ``lease_ttl / 3`` after the confirmation; a failed try is retried a third
  of a TTL later, so two tries fit in a lease.
* A lease counts as **lost locally** once ``confirmed + lease_ttl * (1 - LOST_MARGIN)`` has
  passed without a newer confirmation, whatever the network is doing: a renewal that is
  still in flight then is abandoned (renewal calls get that deadline, not the connection's
  ``socket_timeout``). The margin leaves the holder time to be cancelled before the server
  may grant the key to another client (guarantee 6).
* The same rule is applied when a lease is released (:meth:`Renewer.untrack`): a holder
  whose own event loop stalled past the deadline cannot have renewed, so its release
  reports the loss even if no timer could run meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TYPE_CHECKING

from ._tasks import TaskSupervisor, logger
from .backends._base import Backend, Grant
from .errors import AgentLocksError

if TYPE_CHECKING:
    from ._lease import Lease

#: Renew after this fraction of the shortest TTL among tracked leases.
RENEW_FRACTION = 1 / 3
#: A lease is lost locally this fraction of its TTL *before* the server may expire it.
LOST_MARGIN = 0.1


def lost_after(grant: Grant) -> float:
    """Seconds after a confirmation at which ``grant``'s lease counts as lost locally."""
    return grant.lease_ttl * (1 - LOST_MARGIN)


class Renewer:
    """Tracks the live leases of one coordinator, keeps them alive, and fails them on time."""

    def __init__(self, backend: Backend, tasks: TaskSupervisor) -> None:
        self._backend = backend
        self._tasks = tasks
        # grant -> (lease, monotonic send time of the last request the server confirmed)
        self._tracked: dict[Grant, tuple[Lease, float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._due = math.inf  # monotonic time the task sleeps toward
        self._retry_at = 0.0  # after a failed renewal, no new attempt before this
        self._interval = 1.0  # the last renewal interval (seconds), also the idle linger

    def track(self, lease: Lease, grant: Grant) -> None:
        """Start renewing ``grant``; start the renewal task if it is not running."""
        self._tracked[grant] = (lease, grant.acquired_at)
        if self._task is None or self._task.done():
            self._task = self._tasks.spawn(self._run(), name="lease renewal")
        elif grant.acquired_at + grant.lease_ttl * RENEW_FRACTION < self._due:
            # A shorter TTL needs an earlier tick than the one the task sleeps toward.
            self._wakeup.set()

    def untrack(self, grant: Grant) -> bool:
        """Stop renewing ``grant`` (it is being released); return True if it had expired.

        Expired means its last confirmation is older than :func:`lost_after`: the holder
        may already share the key with a new holder, so the release must report a loss.
        """
        expired = self.expired(grant)
        self._tracked.pop(grant, None)
        return expired

    def expired(self, grant: Grant) -> bool:
        """True if ``grant`` is tracked and its last confirmation is too old to trust."""
        entry = self._tracked.get(grant)
        return entry is not None and time.monotonic() - entry[1] >= lost_after(grant)

    def lost(self, grant: Grant) -> None:
        """``grant`` is gone (the server said so, or its lease ran out): fail it loudly."""
        entry = self._tracked.pop(grant, None)
        if entry is not None:
            held = time.monotonic() - grant.acquired_at
            entry[0]._coordinator._telemetry.lease_lost(entry[0].key, grant.token, held)
            entry[0]._mark_lost()

    def lose_all(self) -> None:
        """Mark every tracked lease lost (the coordinator is closing)."""
        for grant in list(self._tracked):
            self.lost(grant)

    async def aclose(self) -> None:
        """Stop the renewal task; leases stay tracked until released or lost."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the task ----------------------------------------------------------------------------

    def _expire(self, now: float) -> float:
        """Fail every lease past its deadline; return the earliest deadline left."""
        earliest = math.inf
        for grant, (_, confirmed) in list(self._tracked.items()):
            deadline = confirmed + lost_after(grant)
            if deadline <= now:
                self.lost(grant)
            else:
                earliest = min(earliest, deadline)
        return earliest

    async def _run(self) -> None:
        idle = False
        while True:
            now = time.monotonic()
            lost_at = self._expire(now)
            if self._tracked:
                idle = False
                self._interval = min(g.lease_ttl for g in self._tracked) * RENEW_FRACTION
                # Renew when the lease confirmed longest ago is due; the batch renews every
                # other lease with it.
                due = min(
                    sent + g.lease_ttl * RENEW_FRACTION for g, (_, sent) in self._tracked.items()
                )
                self._due = max(due, self._retry_at)
                if self._due > now:
                    # Wake for the renewal, or for a deadline if renewals keep failing.
                    await self._sleep(min(self._due, lost_at) - now)
                    continue
                await self._renew_all(lost_at)
            elif idle:
                self._due = math.inf
                return  # nothing to renew for a whole interval; track() starts a new task
            else:
                idle = True  # linger one interval, so steady traffic keeps this task
                self._due = now + self._interval
                await self._sleep(self._interval)

    async def _sleep(self, seconds: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), max(seconds, 0.0))

    async def _renew_all(self, lost_at: float) -> None:
        grants = list(self._tracked)
        sent = time.monotonic()
        try:
            # The call may take no longer than the first lease it carries has left: past
            # that, that lease is lost whatever the answer would have been (guarantee 6).
            async with asyncio.timeout(max(lost_at - sent, 0.0)):
                gone = await self._backend.renew(grants)
        except Exception as exc:
            # Unreachable, too slow, or a bug: keep every lease whose deadline has not
            # passed and try again a third of a TTL later; _expire fails the others on
            # time. (Letting this task die would leave every lease unrenewed *and* unfailed.)
            reason = "no answer in time" if isinstance(exc, TimeoutError) else exc
            if isinstance(exc, AgentLocksError | TimeoutError):
                logger.warning("lease renewal failed: %s", reason)
            else:
                logger.error("lease renewal failed: %r", exc, exc_info=exc)
            self._retry_at = time.monotonic() + self._interval
            return
        for grant in grants:
            entry = self._tracked.get(grant)
            if entry is not None:  # not released meanwhile
                self._tracked[grant] = (entry[0], sent)
                recorder = entry[0]._coordinator._telemetry
                recorder.renewed(entry[0].key, grant.token, sent - entry[1], grant.lease_ttl)
        for grant in gone:
            self.lost(grant)
