"""The keyword options of every acquiring call, declared once, validated once.

Each option is declared in exactly one of the ``TypedDict`` classes below (the narrowest
call that takes it), its default once in :data:`DEFAULTS`, and its validation once in
:func:`build_request`, which turns a call's options into a :class:`Request`. Every public
entry point (``acquire``, ``semaphore``, ``serialized``, ``backpressure`` and the FastAPI
dependencies) takes ``**options: Unpack[...]`` of one of these classes.

Why ``**options`` rather than keyword parameters with defaults: CPython fills keyword-only
defaults through a dict lookup per parameter on every call, and that alone was ~7% of an
uncontended acquire+release (measured in instructions with callgrind). Type checkers still
see every option and its type; an unknown name raises ``TypeError`` exactly as a keyword
parameter would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, TypedDict

from ._url import parse_lease_ttl, parse_timeout
from .errors import ConfigError

OnLost = Literal["cancel", "ignore"]


class BackpressureOptions(TypedDict, total=False):
    """Options of ``coord.backpressure(name, capacity=..., **options)``; all optional.

    Attributes:
        timeout: Seconds to wait; None (default) waits for ever; 0 means do not wait.
        max_waiting: Fail at once with ``QueueFull`` if this many requests already wait.
        lease_ttl: Lease time-to-live on backends whose leases expire (default: the
            coordinator's).
        on_lost: ``"cancel"`` (default) cancels the ``async with`` body when the lease is
            lost; ``"ignore"`` lets it run on. Leaving the block raises ``LeaseLost``.
    """

    timeout: float | None
    max_waiting: int | None
    lease_ttl: float | None
    on_lost: OnLost


class SemaphoreOptions(BackpressureOptions, total=False):
    """Options of ``coord.semaphore(name, capacity, **options)``; all optional.

    Those of :class:`BackpressureOptions` (``timeout``, ``max_waiting``, ``lease_ttl``,
    ``on_lost``), plus:

    Attributes:
        wait: False fails at once with ``Busy`` if no slot is free now (default True).
    """

    wait: bool


class LockOptions(SemaphoreOptions, total=False):
    """Options of ``coord.acquire(key, **options)``: the semaphore options, plus ``shared``.

    ``timeout``, ``wait``, ``max_waiting``, ``lease_ttl`` and ``on_lost`` mean what they
    mean for :class:`SemaphoreOptions`.

    Attributes:
        shared: Share the key with other shared holders (readers); default exclusive.
    """

    shared: bool


DEFAULTS: Final[LockOptions] = {
    "shared": False,  # a semaphore slot is always shared: not an option there
    "timeout": None,
    "wait": True,
    "max_waiting": None,
    "lease_ttl": None,  # the coordinator's lease_ttl
    "on_lost": "cancel",
}
"""The default of every option: what a call that leaves the option out gets."""

LOCK_OPTION_NAMES: Final = LockOptions.__optional_keys__
SEMAPHORE_OPTION_NAMES: Final = SemaphoreOptions.__optional_keys__


class Request:
    """A call's options, validated, defaults applied: how a lease asks for its resource.

    Built once per call that passes options (once per decorator or dependency, which
    reuse it for every call), and shared by every lease built from it: never mutated. A
    slotted class rather than a tuple so that every reader names the field it reads;
    attribute reads of slots cost what tuple unpacking did on the hot path.

    Attributes:
        shared: False for an exclusive lock; True for a shared lock or a semaphore slot.
        capacity: The semaphore's capacity; None for a lock.
        timeout: Seconds to wait; None for ever; 0: do not wait.
        wait: False: fail with ``Busy`` rather than wait.
        max_waiting: Fail with ``QueueFull`` if this many requests already wait.
        lease_ttl: The lease time-to-live in seconds (the coordinator's default applied).
        on_lost: ``"cancel"`` or ``"ignore"``.
    """

    __slots__ = ("capacity", "lease_ttl", "max_waiting", "on_lost", "shared", "timeout", "wait")

    def __init__(
        self,
        shared: bool,
        capacity: int | None,
        timeout: float | None,
        wait: bool,
        max_waiting: int | None,
        lease_ttl: float,
        on_lost: OnLost,
    ) -> None:
        self.shared = shared
        self.capacity = capacity
        self.timeout = timeout
        self.wait = wait
        self.max_waiting = max_waiting
        self.lease_ttl = lease_ttl
        self.on_lost = on_lost

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Request({fields})"


BACKPRESSURE_OPTION_NAMES: Final = BackpressureOptions.__optional_keys__
_new_request: Final = object.__new__
# DEFAULTS, read once here rather than on every call of build_request (the options path).
_SHARED, _WAIT, _TIMEOUT = DEFAULTS["shared"], DEFAULTS["wait"], DEFAULTS["timeout"]
_MAX_WAITING, _LEASE_TTL, _ON_LOST = (
    DEFAULTS["max_waiting"], DEFAULTS["lease_ttl"], DEFAULTS["on_lost"]
)  # fmt: skip


def build_request(
    caller: str,
    capacity: int | None,
    options: Mapping[str, object],
    default_lease_ttl: float,
    accepted: frozenset[str] | None = None,
) -> Request:
    """Validate ``options`` for ``caller`` and return the :class:`Request` they make.

    ``capacity`` is None for a lock (``acquire``'s options), the semaphore's capacity
    otherwise (``semaphore``'s options, which leave out ``shared``). ``accepted`` narrows
    the option names further (``backpressure`` takes no ``wait``).

    Raises:
        TypeError: An option name ``caller`` does not take.
        ConfigError: An option value that is not accepted (the message says what is).
    """
    if accepted is None:
        accepted = LOCK_OPTION_NAMES if capacity is None else SEMAPHORE_OPTION_NAMES
    for name in options:
        if name not in accepted:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
    get = options.get
    shared = get("shared", _SHARED if capacity is None else True)
    wait = get("wait", _WAIT)
    if type(shared) is not bool or type(wait) is not bool:
        raise ConfigError("shared and wait must be bool")
    timeout = parse_timeout(get("timeout", _TIMEOUT))
    max_waiting = get("max_waiting", _MAX_WAITING)
    if max_waiting is not None and (
        isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0
    ):
        raise ConfigError(f"max_waiting must be None or an int >= 0, got {max_waiting!r}")
    lease_ttl = get("lease_ttl", _LEASE_TTL)
    ttl = default_lease_ttl if lease_ttl is None else parse_lease_ttl(lease_ttl)
    on_lost = get("on_lost", _ON_LOST)
    if on_lost != "cancel" and on_lost != "ignore":
        raise ConfigError(f"on_lost must be 'cancel' or 'ignore', got {on_lost!r}")
    # Request.__init__ inlined: this runs on every acquire that passes options, and the
    # constructor call was a tenth of such an acquire+release (callgrind).
    request = _new_request(Request)
    request.shared = shared
    request.capacity = capacity
    request.timeout = timeout
    request.wait = wait
    request.max_waiting = max_waiting
    request.lease_ttl = ttl
    request.on_lost = on_lost
    return request


def non_default(options: Mapping[str, object]) -> str:
    """``", name=value"`` for each option of ``options`` that differs from its default."""
    defaults: Mapping[str, object] = DEFAULTS
    return "".join(
        f", {name}={value!r}" for name, value in options.items() if value != defaults.get(name)
    )
