"""Observability options: what the ``agentlocks`` log lines show, and when they appear.

Metrics (OpenTelemetry, when ``opentelemetry-api`` is installed) and log lines (the
``agentlocks`` logger) are described in ``docs/operations.md``. They never carry a secret,
and metric attributes never carry a key; log lines carry the key unless ``hash_keys`` is on.

Example:
    >>> from agentlocks import observability
    >>> observability.configure(hash_keys=True, slow_wait=0.5)
    >>> observability.shown_key("user:42")
    'sha256:ea3fd43be1e57d62'
    >>> observability.configure(hash_keys=False, slow_wait=1.0)
"""

from __future__ import annotations

import math

from ._telemetry import OPTIONS, shown_key

__all__ = ["LOGGER_NAME", "configure", "shown_key"]

#: The logger every agentlocks log line goes to.
LOGGER_NAME = "agentlocks"


def configure(
    *,
    hash_keys: bool | None = None,
    slow_wait: float | None = None,
    late_renewal: float | None = None,
) -> None:
    """Set process-wide observability options; arguments left out keep their value.

    Args:
        hash_keys: Log ``"sha256:<16 hex>"`` instead of each key (keys may hold user ids).
            The same key always gives the same hash, so lines still correlate.
        slow_wait: Seconds a granted request must have waited for an INFO line
            ``acquire waited long`` (default 1).
        late_renewal: Fraction of ``lease_ttl`` between two confirmed renewals past which a
            WARNING ``lease renewed late`` is logged (default 0.5; renewals are normally
            due every third of a TTL).

    Raises:
        ValueError: A negative or non-finite duration, or a fraction outside (0, 1].
    """
    if slow_wait is not None:
        if not math.isfinite(slow_wait) or slow_wait < 0:
            raise ValueError(f"slow_wait must be a finite number >= 0, got {slow_wait!r}")
        OPTIONS.slow_wait = float(slow_wait)
    if late_renewal is not None:
        if not 0 < late_renewal <= 1:
            raise ValueError(f"late_renewal must be in (0, 1], got {late_renewal!r}")
        OPTIONS.late_renewal = float(late_renewal)
    if hash_keys is not None:
        OPTIONS.hash_keys = bool(hash_keys)
