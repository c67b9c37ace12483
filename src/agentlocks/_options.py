"""The keyword options of ``acquire()`` and ``semaphore()``, typed and validated once.

The public methods take ``**options: Unpack[LockOptions]`` rather than six keyword
parameters with defaults: CPython fills keyword-only defaults through a dict lookup per
parameter on every call, and that alone was ~7% of an uncontended acquire+release
(measured in instructions with callgrind). Type checkers still see every option and its
type; an unknown name raises ``TypeError`` exactly as a keyword parameter would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypedDict

from ._lease import OnLost, Request
from ._url import parse_lease_ttl, parse_timeout
from .errors import ConfigError


class SemaphoreOptions(TypedDict, total=False):
    """Options of ``coord.semaphore(name, capacity, **options)``; all optional.

    Attributes:
        timeout: Seconds to wait; None (default) waits for ever; 0 means do not wait.
        wait: False fails at once with ``Busy`` if no slot is free now (default True).
        max_waiting: Fail at once with ``QueueFull`` if this many requests already wait.
        lease_ttl: Lease time-to-live on remote backends (default: the coordinator's).
        on_lost: ``"cancel"`` (default) cancels the ``async with`` body when the lease is
            lost; ``"ignore"`` lets it run on. Leaving the block raises ``LeaseLost``.
    """

    timeout: float | None
    wait: bool
    max_waiting: int | None
    lease_ttl: float | None
    on_lost: OnLost


class LockOptions(SemaphoreOptions, total=False):
    """Options of ``coord.acquire(key, **options)``: the semaphore options, plus ``shared``.

    Attributes:
        shared: Share the key with other shared holders (readers); default exclusive.
    """

    shared: bool


LOCK_OPTION_NAMES: Final = frozenset(LockOptions.__annotations__) | frozenset(
    SemaphoreOptions.__annotations__
)
SEMAPHORE_OPTION_NAMES: Final = frozenset(SemaphoreOptions.__annotations__)


def build_request(
    caller: str,
    resource: str,
    key: str,
    capacity: int | None,
    options: Mapping[str, object],
    default_lease_ttl: float,
) -> Request:
    """Validate ``options`` for ``caller`` and return the request tuple of a new lease.

    Raises:
        TypeError: An option name ``caller`` does not take.
        ConfigError: An option value that is not accepted (the message says what is).
    """
    accepted = LOCK_OPTION_NAMES if capacity is None else SEMAPHORE_OPTION_NAMES
    for name in options:
        if name not in accepted:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
    shared = options.get("shared", capacity is not None)
    wait = options.get("wait", True)
    if type(shared) is not bool or type(wait) is not bool:
        raise ConfigError("shared and wait must be bool")
    timeout = parse_timeout(options.get("timeout"))
    max_waiting = options.get("max_waiting")
    if max_waiting is not None and (
        isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0
    ):
        raise ConfigError(f"max_waiting must be None or an int >= 0, got {max_waiting!r}")
    lease_ttl = options.get("lease_ttl")
    ttl = default_lease_ttl if lease_ttl is None else parse_lease_ttl(lease_ttl)
    on_lost = options.get("on_lost", "cancel")
    if on_lost != "cancel" and on_lost != "ignore":
        raise ConfigError(f"on_lost must be 'cancel' or 'ignore', got {on_lost!r}")
    return (resource, key, shared, capacity, timeout, wait, max_waiting, ttl, on_lost)
