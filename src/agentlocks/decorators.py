"""``coord.serialized`` and ``coord.backpressure``: per-key FIFO and a cluster-wide cap.

Both are thin policy over the two primitives: ``serialized`` is ``coord.acquire(key)``
around the call, ``backpressure`` is ``coord.semaphore(name, capacity)`` around it. What
they add is the part users get wrong by hand: deriving the key from the call's arguments
(validated when the function is decorated, not on the first request), refusing functions
that are not ``async def``, keeping the wrapped signature for FastAPI and type checkers, and
a ``retry_after`` that reflects how long these calls really hold their key or slot.

Why ``serialized`` goes *above* ``backpressure`` when stacked::

    @coord.serialized("user:{user_id}")
    @coord.backpressure("ingest", capacity=5, max_waiting=50, timeout=30)
    async def ingest(user_id: str, payload: dict) -> Result: ...

The outer decorator is acquired first. In this order one user's backlog waits on that
user's own key and holds nothing global; only the one request per user that is about to run
asks for a slot, so the cap counts running work. In the opposite order each queued request
first takes a global slot and then waits for its user's lock *while holding the slot*: a
user who floods five requests holds all five slots, four of them idle, and every other user
is locked out (and ``max_waiting`` rejects them) although the service does one call.
"""

from __future__ import annotations

import functools
import inspect
import string
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from ._lease import Lease
from ._options import (
    BACKPRESSURE_OPTION_NAMES,
    BackpressureOptions,
    LockOptions,
    build_request,
    non_default,
)
from .errors import ConfigError, Unavailable

if TYPE_CHECKING:
    from .coordinator import Coordinator

__all__ = ["Backpressure", "KeySpec", "Serialized"]

P = ParamSpec("P")
R = TypeVar("R")

KeySpec = str | Callable[..., str]
"""A key template such as ``"user:{user_id}"``, or a callable taking the function's arguments."""

_FORMATTER: Final = string.Formatter()
_HOLD_SMOOTHING: Final = 0.2  # weight of the newest hold time in the moving average


class _Probe:
    """Stands for any argument in a dry run of a template: every attribute and item exists."""

    def __getattr__(self, name: str) -> _Probe:
        return self

    def __getitem__(self, key: object) -> _Probe:
        return self

    def __format__(self, spec: str) -> str:
        return ""


class _ProbeArguments(dict[str, _Probe]):
    def __missing__(self, key: str) -> _Probe:
        return _Probe()


def template_fields(template: str) -> frozenset[str]:
    """Return the argument names a key template reads (``"{req.user_id}"`` reads ``req``).

    Raises:
        ConfigError: The template is malformed or has a positional field (``{}``, ``{0}``).
    """
    names: set[str] = set()
    pending = [template]
    while pending:
        try:
            parsed = list(_FORMATTER.parse(pending.pop()))
        except ValueError as exc:
            raise ConfigError(f"key template {template!r} is malformed: {exc}") from None
        for _, field, spec, _ in parsed:
            if field is None:
                continue
            # "req.user_id" and "items[0]" read the argument before the first "." or "[".
            name = field.split(".", 1)[0].split("[", 1)[0]
            if not name.isidentifier():
                raise ConfigError(
                    f"key template {template!r}: each field must name a parameter, "
                    f"like 'user:{{user_id}}'; got {{{field}}}"
                )
            names.add(name)
            if spec:
                pending.append(spec)  # nested fields, as in "{name:>{width}}"
    try:
        # A dry run catches what parse() lets through ("{a.}", "{a[0}", "{a!z}").
        template.format_map(_ProbeArguments())
    except ValueError as exc:
        raise ConfigError(f"key template {template!r} is malformed: {exc}") from None
    return frozenset(names)


def require_async(fn: object, what: str) -> None:
    """Raise ``TypeError`` unless ``fn`` is an ``async def`` function (or async callable)."""
    call = getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ counts too
    if inspect.isclass(fn) or not (
        inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
    ):
        raise TypeError(
            f"@{what} only wraps `async def` functions, got {fn!r}: the lock is held across "
            "an await, which a plain function (or a generator) cannot provide"
        )


def _key_function(
    key: KeySpec, fn: Callable[..., Any]
) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
    """Build ``(args, kwargs) -> key`` for ``fn``, checking the template against it now."""
    if not isinstance(key, str):

        def call_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return key(*args, **kwargs)

        return call_key
    signature = inspect.signature(fn)
    missing = template_fields(key) - signature.parameters.keys()
    if missing:
        raise TypeError(
            f"key template {key!r} names {', '.join(sorted(missing))}, but "
            f"{getattr(fn, '__qualname__', fn)!r} has no such parameter "
            f"(its parameters: {', '.join(signature.parameters) or 'none'})"
        )
    format_map = key.format_map

    def template_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        # Binding raises TypeError for a call that does not match the signature, so a bad
        # call fails here, before it waits for anything.
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return format_map(bound.arguments)

    return template_key


class _Holds:
    """A moving average of how long one decorator's calls hold what they acquired.

    Feeds ``retry_after``: the coordinator alone cannot know how long *this* work holds a
    key or slot (its own average mixes every key and misses the in-process fast path).
    """

    __slots__ = ("average",)

    def __init__(self) -> None:
        self.average: float | None = None

    def observe(self, seconds: float) -> None:
        previous = self.average
        self.average = (
            seconds if previous is None else previous + _HOLD_SMOOTHING * (seconds - previous)
        )

    def drain_time(self, capacity: int, max_waiting: int | None) -> float | None:
        """Seconds for ``capacity`` holders plus ``max_waiting`` waiters to finish."""
        if self.average is None:
            return None
        backlog = capacity + (max_waiting or 0)
        return max(self.average * backlog / capacity, 0.001)


@asynccontextmanager
async def _measured(
    lease: Lease, holds: _Holds, capacity: int, max_waiting: int | None
) -> AsyncIterator[Lease]:
    """Hold ``lease`` for the block, timing the hold; a refusal gets ``holds``' estimate."""
    admitted = False
    try:
        async with lease:
            admitted = True
            started = time.monotonic()
            try:
                yield lease
            finally:
                holds.observe(time.monotonic() - started)
    except Unavailable as exc:
        # Only a refusal of *this* lease gets our estimate; an Unavailable raised by the
        # body (a nested lock, say) is someone else's and passes through untouched.
        estimate = None if admitted else holds.drain_time(capacity, max_waiting)
        if estimate is not None:
            exc.retry_after = estimate
        raise


class Serialized:
    """The decorator ``coord.serialized(key, ...)`` returns: one call at a time per key, FIFO.

    Calls whose arguments format to the same key run one after another, in the order they
    reached the backend, across every process sharing the backend; other keys run in
    parallel. Options are those of :meth:`Coordinator.acquire
    <agentlocks.Coordinator.acquire>` and are checked here, before anything is decorated.

    Example:
        >>> import agentlocks, anyio
        >>> coord = agentlocks.connect()
        >>> @coord.serialized("user:{user_id}", timeout=30)
        ... async def ingest(user_id: str, text: str = "") -> int:
        ...     return len(text)
        >>> anyio.run(ingest, "u1", "hello")
        5
    """

    __slots__ = ("_coordinator", "_holds", "_key", "_options", "_request")

    def __init__(self, coordinator: Coordinator, key: KeySpec, options: LockOptions) -> None:
        if isinstance(key, str):
            template_fields(key)
        elif not callable(key):
            raise TypeError(f"key must be a template str or a callable, got {key!r}")
        # Validated once, here; every call reuses the request (and does no I/O here).
        self._request = coordinator._lock_request("serialized", options)
        self._coordinator = coordinator
        self._key = key
        self._options = options  # as given, for the repr
        self._holds = _Holds()

    def __repr__(self) -> str:
        return f"Serialized({self._key!r}{non_default(self._options)})"

    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        """Wrap ``fn``; raises ``TypeError`` if it is not ``async def`` or lacks a field."""
        require_async(fn, "serialized")
        key_of = _key_function(self._key, fn)
        lock_lease, request, holds = self._coordinator._lock_lease, self._request, self._holds
        max_waiting = request.max_waiting

        @functools.wraps(fn)
        async def serialized_call(*args: P.args, **kwargs: P.kwargs) -> R:
            # The key is checked before any I/O (as acquire() does), so a key that formats
            # to something invalid raises InvalidKey before this call waits or queues.
            lease = lock_lease(key_of(args, kwargs), request)
            async with _measured(lease, holds, 1, max_waiting):
                return await fn(*args, **kwargs)

        return serialized_call

    @property
    def retry_after(self) -> float | None:
        """Seconds after which a refused call is worth retrying; None before any call ran.

        The time for the holder and ``max_waiting`` queued calls of one key to finish, at
        the average hold time of this decorator's calls (measured in this process).
        """
        return self._holds.drain_time(1, self._request.max_waiting)


class Backpressure:
    """A cluster-wide cap with fail-fast admission; what ``coord.backpressure(...)`` returns.

    Use it as a decorator, or hold one slot with ``async with limiter.slot():``. Every
    request either gets a slot or fails fast with an ``Unavailable``: ``QueueFull`` when
    ``max_waiting`` requests already wait, ``AcquireTimeout`` after ``timeout`` seconds. Both
    carry ``retry_after``, estimated from the hold times this object has measured (see
    :attr:`retry_after`).

    Example:
        >>> import agentlocks, anyio
        >>> coord = agentlocks.connect()
        >>> @coord.backpressure("llm", capacity=2, max_waiting=10, timeout=30)
        ... async def complete(prompt: str) -> str:
        ...     return prompt.upper()
        >>> anyio.run(complete, "hi")
        'HI'
    """

    __slots__ = ("_coordinator", "_holds", "_request", "_resource")

    def __init__(
        self, coordinator: Coordinator, name: str, capacity: int, options: BackpressureOptions
    ) -> None:
        # semaphore() checks the name and the capacity; the options are checked here, once.
        template = coordinator.semaphore(name, capacity)
        self._coordinator = coordinator
        # The validated request, reused for every call: a Lease is acquired once, so each
        # call wraps it in a fresh (cheap) pending Lease.
        self._resource = template._resource
        self._request = build_request(
            "backpressure", capacity, options, coordinator.lease_ttl, BACKPRESSURE_OPTION_NAMES
        )
        self._holds = _Holds()

    @property
    def name(self) -> str:
        """The semaphore name (what ``coord.inspect(name, semaphore=True)`` reports)."""
        return self._resource[2:]

    @property
    def capacity(self) -> int:
        """At most this many calls hold a slot at once, cluster-wide."""
        capacity = self._request.capacity
        assert capacity is not None
        return capacity

    @property
    def max_waiting(self) -> int | None:
        """Requests beyond this many waiting are rejected with ``QueueFull`` (None: no bound)."""
        return self._request.max_waiting

    @property
    def timeout(self) -> float | None:
        """Seconds a request may wait before ``AcquireTimeout`` (None: no bound)."""
        return self._request.timeout

    @property
    def retry_after(self) -> float | None:
        """Seconds after which a rejected request is worth retrying; None before any call ran.

        The time for everything the admission policy lets in to drain: the ``capacity``
        running calls plus ``max_waiting`` queued ones, at the average hold time measured
        here, ``capacity`` at a time. (The hold times are this process's; every replica
        measures its own.)
        """
        return self._holds.drain_time(self.capacity, self.max_waiting)

    def __repr__(self) -> str:
        return (
            f"Backpressure({self.name!r}, capacity={self.capacity}, "
            f"max_waiting={self.max_waiting}, timeout={self.timeout})"
        )

    def slot(self) -> AbstractAsyncContextManager[Lease]:
        """Hold one slot for the block; ``Unavailable`` (with ``retry_after``) if refused."""
        lease = Lease(self._coordinator, self._resource, self._request)
        return _measured(lease, self._holds, self.capacity, self.max_waiting)

    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        """Wrap ``fn`` so that each call holds one slot; ``TypeError`` unless ``async def``."""
        require_async(fn, "backpressure")
        slot = self.slot

        @functools.wraps(fn)
        async def backpressured_call(*args: P.args, **kwargs: P.kwargs) -> R:
            async with slot():
                return await fn(*args, **kwargs)

        return backpressured_call
