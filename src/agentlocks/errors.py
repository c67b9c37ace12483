"""The whole exception tree of agentlocks.

Every error agentlocks raises derives from :class:`AgentLocksError`. Each class says when it
is raised; ``code`` is the stable machine-readable name used in HTTP error bodies.

```
AgentLocksError
├── Unavailable          could not get it now; carries retry_after (seconds) -> HTTP 503
│   ├── Busy             wait=False and it is held
│   ├── QueueFull        max_waiting reached
│   └── AcquireTimeout   timeout elapsed (also a TimeoutError)
├── ThreadBusy           LangGraph thread already running and on_busy="reject" -> HTTP 409
├── ConcurrentRunError   a checkpoint write lost a race with another run on the same thread
├── LeaseLost            the lease ended while held
├── BackendError         the server failed or is unreachable (driver error as __cause__)
├── ConfigError          bad URL or option (also a ValueError)
└── InvalidKey           bad key (also a ValueError)
```
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AcquireTimeout",
    "AgentLocksError",
    "BackendError",
    "Busy",
    "ConcurrentRunError",
    "ConfigError",
    "InvalidKey",
    "LeaseLost",
    "QueueFull",
    "ThreadBusy",
    "Unavailable",
]


class AgentLocksError(Exception):
    """Base class of every error raised by agentlocks.

    Args:
        message: Human-readable explanation; never contains a password.
        key: The lock key or semaphore name concerned, when there is one.
    """

    code: ClassVar[str] = "agentlocks_error"

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    @property
    def message(self) -> str:
        """The message given at construction."""
        return str(self.args[0]) if self.args else ""


class Unavailable(AgentLocksError):
    """The lock or slot could not be had now; retrying later may succeed (HTTP 503).

    ``retry_after`` is an estimate, in seconds, of when a retry is worth making; it is what
    ``agentlocks.fastapi`` sends as ``Retry-After``.
    """

    code: ClassVar[str] = "unavailable"

    def __init__(self, message: str, *, key: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, key=key)
        self.retry_after = retry_after


class Busy(Unavailable):
    """Raised by ``acquire(..., wait=False)`` when the key cannot be granted at once."""

    code: ClassVar[str] = "busy"


class QueueFull(Unavailable):
    """Raised when ``max_waiting`` requests already wait on the key, counted cluster-wide."""

    code: ClassVar[str] = "queue_full"


class AcquireTimeout(Unavailable, TimeoutError):
    """Raised when ``timeout`` seconds elapsed before the key was granted.

    The request has left the queue by the time this is raised.
    """

    code: ClassVar[str] = "acquire_timeout"


class ThreadBusy(AgentLocksError):
    """A LangGraph thread already has a run and ``on_busy="reject"`` was asked (HTTP 409)."""

    code: ClassVar[str] = "thread_busy"


class ConcurrentRunError(AgentLocksError):
    """A checkpoint write lost a race with another run on the same LangGraph thread."""

    code: ClassVar[str] = "concurrent_run"


class LeaseLost(AgentLocksError):
    """The lease ended while it was held: expired, dropped connection, or released by force.

    Raised when leaving an ``async with`` block whose lease was lost, by ``Lease.verify()``,
    and by ``Lease.release()`` of a lease that was lost. A lost lease is never reported as
    success.
    """

    code: ClassVar[str] = "lease_lost"


class BackendError(AgentLocksError):
    """The server failed or could not be reached; the driver's error is ``__cause__``."""

    code: ClassVar[str] = "backend_error"


class ConfigError(AgentLocksError, ValueError):
    """A URL or option is not valid; the message says what is accepted. Raised before any I/O."""

    code: ClassVar[str] = "config_error"


class InvalidKey(AgentLocksError, ValueError):
    """A key is not a ``str`` of 1 to 1024 UTF-8 bytes. Raised before any I/O."""

    code: ClassVar[str] = "invalid_key"
