"""Metrics and log lines, on the slow paths only (``docs/operations.md`` documents both).

OpenTelemetry metrics are recorded when ``opentelemetry-api`` is installed (extra
``agentlocks[otel]``); it is imported on the first event, never by ``import agentlocks``.
Without a configured SDK the API records into a no-op. There are no semantic conventions
for locks; the names follow the closest ones, database connection pools
(``db.client.connection.wait_time``, ``.use_time``, ``.pending_requests``) and rate
limiting (``aspnetcore.rate_limiting.requests`` with a ``result``). Meter ``agentlocks``:

* ``agentlocks.lease.wait_time`` (histogram, s): how long a request waited, whatever came
  of it (attribute ``agentlocks.lease.result``);
* ``agentlocks.lease.duration`` (histogram, s): how long a lease was held, up to its release;
* ``agentlocks.lease.pending_requests`` (up-down counter, ``{request}``): requests of this
  process waiting now;
* ``agentlocks.lease.requests`` (counter, ``{request}``): requests by
  ``agentlocks.lease.result``: ``acquired``, ``timeout``, ``rejected`` (``Busy`` or
  ``QueueFull``), ``cancelled``, ``error`` (``BackendError``), and ``lost`` for a held lease
  that was lost. ``error.type`` names the exception class when there is one.

Every point carries ``agentlocks.backend`` (the URL scheme), ``agentlocks.namespace`` and
``agentlocks.kind`` (``lock`` or ``semaphore``); never a key (unbounded cardinality).
The in-process backend's uncontended fast path records nothing: timing it would double the
cost of the fastest path; its requests that had to wait with a deadline or a fail-fast
option are recorded.

Log lines go to the ``agentlocks`` logger, with the figures as ``extra`` fields
(``agentlocks_key``, ``agentlocks_token``, ``agentlocks_waited``, ``agentlocks_held``,
``agentlocks_late``, ``agentlocks_reason``, ``agentlocks_namespace``, ``agentlocks_backend``):
refusals at DEBUG, a wait longer than ``slow_wait`` at INFO, a renewal sent late and a lost
lease at WARNING. Keys can be replaced by a hash (:func:`agentlocks.observability.configure`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, Final

logger: Final = logging.getLogger("agentlocks")

_KINDS: Final = {"l": "lock", "s": "semaphore"}
_RESULT: Final = "agentlocks.lease.result"
_SCHEMES: Final = {"postgres": "postgresql", "rediss": "redis"}


@dataclass(slots=True)
class Options:
    """Process-wide observability options (``agentlocks.observability.configure``)."""

    hash_keys: bool = False
    slow_wait: float = 1.0
    late_renewal: float = 0.5


OPTIONS: Final = Options()


def shown_key(key: str) -> str:
    """The key as log lines show it: itself, or ``"sha256:<16 hex>"`` when hashing is on."""
    if not OPTIONS.hash_keys:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class Telemetry:
    """The OTel instruments of this process, created on first use (or never, without OTel)."""

    def __init__(self) -> None:
        self._ready = False
        self._instruments: dict[str, Any] | None = None

    def instruments(self) -> dict[str, Any] | None:
        """The instruments, or None without ``opentelemetry-api``."""
        if not self._ready:
            self._ready = True
            if importlib.util.find_spec("opentelemetry") is not None:
                from opentelemetry import metrics

                meter = metrics.get_meter("agentlocks")
                self._instruments = {
                    "wait": meter.create_histogram(
                        "agentlocks.lease.wait_time",
                        unit="s",
                        description="Time a request waited before it was granted or gave up",
                    ),
                    "hold": meter.create_histogram(
                        "agentlocks.lease.duration",
                        unit="s",
                        description="Time a lease was held, from its grant to its release",
                    ),
                    "pending": meter.create_up_down_counter(
                        "agentlocks.lease.pending_requests",
                        unit="{request}",
                        description="Requests of this process waiting for a lock or slot",
                    ),
                    "requests": meter.create_counter(
                        "agentlocks.lease.requests",
                        unit="{request}",
                        description="Requests by result (acquired, timeout, rejected, ...)",
                    ),
                }
        return self._instruments

    def recorder(self, scheme: str, namespace: str) -> Recorder:
        """The recorder of one coordinator: its attributes computed once."""
        return Recorder(self, _SCHEMES.get(scheme, scheme), namespace)


#: The process's instruments: metrics are per process, like the OTel meter provider.
TELEMETRY: Final = Telemetry()


class Recorder:
    """What one coordinator records; every method is called on a slow path only."""

    __slots__ = ("_attrs", "_backend", "_namespace", "_telemetry")

    def __init__(self, telemetry: Telemetry, backend: str, namespace: str) -> None:
        self._telemetry = telemetry
        self._backend = backend
        self._namespace = namespace
        self._attrs = {
            code: {
                "agentlocks.backend": backend,
                "agentlocks.namespace": namespace,
                "agentlocks.kind": kind,
            }
            for code, kind in _KINDS.items()
        }

    def _base(self, resource: str) -> dict[str, str]:
        return self._attrs.get(resource[:1], self._attrs["l"])

    def _extra(self, key: str, **fields: object) -> dict[str, object]:
        extra: dict[str, object] = {
            "agentlocks_key": shown_key(key),
            "agentlocks_namespace": self._namespace,
            "agentlocks_backend": self._backend,
        }
        extra.update({f"agentlocks_{name}": value for name, value in fields.items()})
        return extra

    def _count(self, resource: str, result: str, waited: float | None, error: str | None) -> None:
        instruments = self._telemetry.instruments()
        if instruments is None:
            return
        attrs: dict[str, str] = {**self._base(resource), _RESULT: result}
        if error is not None:
            attrs["error.type"] = error
        instruments["requests"].add(1, attrs)
        if waited is not None:
            instruments["wait"].record(waited, attrs)

    def waiting(self, resource: str, delta: int) -> None:
        """A request of this process started (+1) or stopped (-1) waiting."""
        if (instruments := self._telemetry.instruments()) is not None:
            instruments["pending"].add(delta, self._base(resource))

    def granted(self, resource: str, key: str, token: int, waited: float | None) -> None:
        """A request was granted after ``waited`` seconds (None: it could not wait)."""
        self._count(resource, "acquired", waited, None)
        if waited is not None and waited >= OPTIONS.slow_wait:
            logger.info(
                "acquire waited long: key=%r token=%s waited=%.3fs",
                shown_key(key), token, waited,
                extra=self._extra(key, token=token, waited=waited),
            )  # fmt: skip

    def refused(self, resource: str, key: str, exc: BaseException, waited: float) -> None:
        """A request failed: ``Busy``/``QueueFull`` (rejected), ``AcquireTimeout``, or else."""
        reason = getattr(exc, "code", type(exc).__name__)
        result = {"busy": "rejected", "queue_full": "rejected", "acquire_timeout": "timeout"}
        outcome = result.get(reason, "error")
        self._count(resource, outcome, waited, type(exc).__name__)
        logger.debug(
            "refused (%s): %s", reason, exc,
            extra=self._extra(key, reason=reason, waited=waited),
        )  # fmt: skip

    def cancelled(self, resource: str, waited: float) -> None:
        """A waiting request was cancelled (its task, or a task group, gave up)."""
        self._count(resource, "cancelled", waited, None)

    def released(self, resource: str, held: float) -> None:
        """A lease was released after ``held`` seconds."""
        if (instruments := self._telemetry.instruments()) is not None:
            instruments["hold"].record(held, self._base(resource))

    def lost(self, resource: str) -> None:
        """A lease was lost while held (counted once per lease)."""
        self._count(resource, "lost", None, "LeaseLost")

    def lease_lost(self, key: str, token: int, held: float) -> None:
        """Log a lost lease (the renewer knows when and why)."""
        logger.warning(
            "lease lost: key=%r token=%s held=%.3fs",
            shown_key(key), token, held,
            extra=self._extra(key, token=token, held=held),
        )  # fmt: skip

    def renewed(self, key: str, token: int, age: float, lease_ttl: float) -> None:
        """A renewal confirmed ``age`` seconds after the last one: log it if that was late."""
        if age >= lease_ttl * OPTIONS.late_renewal:
            logger.warning(
                "lease renewed late: key=%r token=%s %.3fs after the last renewal (ttl %gs)",
                shown_key(key), token, age, lease_ttl,
                extra=self._extra(key, token=token, late=age, lease_ttl=lease_ttl),
            )  # fmt: skip
