"""Metrics and log lines, on the slow paths only.

OpenTelemetry metrics are recorded when ``opentelemetry-api`` is installed (extra
``agentlocks[otel]``); it is imported on the first event, never by ``import agentlocks``.
Without a configured SDK the API records into a no-op. Instruments (meter ``agentlocks``):

* ``agentlocks.acquire.wait`` (histogram, s): how long granted requests waited, for every
  request that went through the coordinator's waiting path (remote backends always; the
  in-process backend when a request could not be granted at once and had a deadline or a
  fail-fast option);
* ``agentlocks.lease.hold`` (histogram, s): hold times of leases released on that path
  (remote backends). Uncontended in-process holds are not timed: timing them would double
  the cost of the fastest path;
* ``agentlocks.acquire.waiting`` (up-down counter): requests of this process waiting now;
* ``agentlocks.acquire.rejected`` (counter, attribute ``reason``: ``busy``, ``queue_full``,
  ``acquire_timeout``);
* ``agentlocks.lease.lost`` (counter).

Every instrument carries ``kind`` (``lock`` or ``semaphore``). Log lines go to the
``agentlocks`` logger: rejections at DEBUG, lost leases at WARNING.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Final

logger: Final = logging.getLogger("agentlocks")

_KINDS: Final = {"l": "lock", "s": "semaphore"}


class Telemetry:
    """The instruments of one process, created on first use (or never, without OTel)."""

    def __init__(self) -> None:
        self._ready = False
        self._instruments: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any] | None:
        if not self._ready:
            self._ready = True
            if importlib.util.find_spec("opentelemetry") is not None:
                from opentelemetry import metrics

                meter = metrics.get_meter("agentlocks")
                self._instruments = {
                    "wait": meter.create_histogram(
                        "agentlocks.acquire.wait", unit="s", description="Wait before a grant"
                    ),
                    "hold": meter.create_histogram(
                        "agentlocks.lease.hold", unit="s", description="Time a lease was held"
                    ),
                    "waiting": meter.create_up_down_counter(
                        "agentlocks.acquire.waiting", description="Requests waiting now"
                    ),
                    "rejected": meter.create_counter(
                        "agentlocks.acquire.rejected", description="Requests refused"
                    ),
                    "lost": meter.create_counter(
                        "agentlocks.lease.lost", description="Leases lost while held"
                    ),
                }
        return self._instruments

    def waiting(self, resource: str, delta: int) -> None:
        """A request of this process started (+1) or stopped (-1) waiting."""
        if (instruments := self._get()) is not None:
            instruments["waiting"].add(delta, {"kind": _KINDS.get(resource[:1], "lock")})

    def granted(self, resource: str, waited: float) -> None:
        """A request was granted after ``waited`` seconds."""
        if (instruments := self._get()) is not None:
            instruments["wait"].record(waited, {"kind": _KINDS.get(resource[:1], "lock")})

    def released(self, resource: str, held: float) -> None:
        """A lease was released after ``held`` seconds."""
        if (instruments := self._get()) is not None:
            instruments["hold"].record(held, {"kind": _KINDS.get(resource[:1], "lock")})

    def rejected(self, resource: str, reason: str, message: str) -> None:
        """A request was refused (``Busy``, ``QueueFull`` or ``AcquireTimeout``)."""
        logger.debug("refused (%s): %s", reason, message)
        if (instruments := self._get()) is not None:
            kind = _KINDS.get(resource[:1], "lock")
            instruments["rejected"].add(1, {"kind": kind, "reason": reason})

    def lost(self, resource: str) -> None:
        """A lease was lost while held (the renewer logs it)."""
        if (instruments := self._get()) is not None:
            instruments["lost"].add(1, {"kind": _KINDS.get(resource[:1], "lock")})


#: The process's instruments: metrics are per process, like the OTel meter provider.
TELEMETRY: Final = Telemetry()
