"""``connect()`` and the ``Coordinator``: the policy written once for every backend.

Backends own waiting and state (``backends/_base.py``). The coordinator owns everything a
user would otherwise get subtly wrong per backend: validating arguments before any I/O,
timeouts (as cancellation of the backend's wait, which backends must survive cleanly),
shielding releases from cancellation, renewing leases, and turning a lost lease into a
cancelled block plus ``LeaseLost``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self

import anyio
from typing_extensions import Unpack

from ._keys import MAX_KEY_BYTES, check_key
from ._lease import Lease
from ._options import (
    BackpressureOptions,
    LockOptions,
    Request,
    SemaphoreOptions,
    build_request,
)
from ._registry import load_backend
from ._registry_lock import Registry
from ._renewal import Renewer
from ._tasks import TaskSupervisor, finish, logger
from ._telemetry import TELEMETRY
from ._url import DEFAULT_URL, Settings, build_settings, split_url
from .backends._base import Backend, Grant, KeyInfo
from .backends._capabilities import FastPath
from .decorators import Backpressure, KeySpec, Serialized
from .errors import (
    AcquireTimeout,
    AgentLocksError,
    BackendError,
    Busy,
    ConfigError,
    LeaseLost,
    Unavailable,
)

__all__ = ["Coordinator", "connect"]

_new_lease = object.__new__

_CLIENT_SCHEMES: Final = {
    "redis": ("redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel",
              "rediss+sentinel"),
    "postgres": ("postgres", "postgresql"),
}  # fmt: skip


def connect(
    url: str | None = None,
    *,
    namespace: str | None = None,
    lease_ttl: float | None = None,
    redis: Any = None,
    postgres: Any = None,
    **options: Any,
) -> Coordinator:
    """Create a coordinator for the backend named by ``url``. Does no I/O.

    Args:
        url: ``memory://``, ``redis://...``, ``rediss://...``, ``redis+cluster://h1:7000,...``,
            ``redis+sentinel://h1:26379,.../service``, ``postgres(ql)://...`` or a
            registered scheme. Defaults to ``$AGENTLOCKS_URL``, else ``memory://``.
            Query parameters set the same options as keywords (``?namespace=x``).
        namespace: Isolates independent apps sharing one server (default ``"agentlocks"``).
        lease_ttl: Default lease time-to-live in seconds (default 30).
        redis: A ``redis.asyncio.Redis`` client you already own (implies ``redis://``), or
            a ``RedisCluster`` (implies ``redis+cluster://``).
        postgres: An ``asyncpg`` pool you already own (implies ``postgresql://``).
        **options: Backend-specific options.

    Raises:
        ConfigError: Unknown scheme, bad option, or missing driver (names the extra).

    Example:
        >>> import agentlocks
        >>> agentlocks.connect("memory://?namespace=billing")
        Coordinator(url='memory://?namespace=billing', namespace='billing')
    """
    if redis is not None and postgres is not None:
        raise ConfigError("pass at most one of redis= and postgres=")
    client_kind = "redis" if redis is not None else "postgres" if postgres is not None else None
    if url is None:
        if client_kind is not None:
            # A RedisCluster client implies a cluster URL (checked by name: no driver import).
            cluster = type(redis).__name__ == "RedisCluster"
            url = "redis+cluster://" if cluster else f"{_CLIENT_SCHEMES[client_kind][0]}://"
        else:
            url = os.environ.get("AGENTLOCKS_URL") or DEFAULT_URL
    scheme, query = split_url(url)
    merged: dict[str, object] = dict(query)
    if client_kind is not None and scheme not in _CLIENT_SCHEMES[client_kind]:
        raise ConfigError(f"{client_kind}= was given but the URL scheme is {scheme!r}")
    if namespace is not None:
        merged["namespace"] = namespace
    if lease_ttl is not None:
        merged["lease_ttl"] = lease_ttl
    merged.update(options)
    backend_cls = load_backend(scheme)
    accepted = frozenset(getattr(backend_cls, "option_names", frozenset()))
    settings = build_settings(scheme, url, merged, accepted, redis or postgres)
    return Coordinator(settings, backend_cls)


async def _release_lost(backend: Backend, grant: Grant) -> None:
    """Release a grant already reported lost; a failure only means it expires by itself."""
    try:
        await backend.release(grant)
    except AgentLocksError as exc:
        logger.warning("release of a lost lease failed; it expires by itself: %s", exc)


class Coordinator:
    """Locks, semaphores and registries on one backend. Create it with :func:`connect`.

    Use it as an async context manager, or call :meth:`aclose` on shutdown.
    """

    def __init__(self, settings: Settings, backend_cls: type[Backend]) -> None:
        self._settings = settings
        # Owns every background task of this coordinator and its backend (``_tasks.py``).
        self._tasks = TaskSupervisor()
        self._backend: Backend = backend_cls(settings, self._on_backend_lost, self._tasks)
        # A backend whose release cannot be cut short by its caller's cancellation (it says
        # so with ``release_finishes = True``) is awaited directly: finish() would only add
        # a task and three loop wake-ups to every release.
        self._release_finishes = bool(getattr(backend_cls, "release_finishes", False))
        # Leases that expire unless renewed are renewed, tracked and can be lost; the
        # others never are, so none of that machinery exists for them.
        leases_expire = bool(backend_cls.leases_expire)
        self._renewer = Renewer(self._backend, self._tasks) if leases_expire else None
        # Optional synchronous fast path (see FastPath): only where leases do not expire,
        # because its grants bypass the renewer's tracking.
        fast = None if leases_expire or not isinstance(self._backend, FastPath) else self._backend
        self._try_acquire: Callable[[str, bool, int | None, float], Grant | None] | None = (
            None if fast is None else fast.try_acquire
        )
        self._release_nowait: Callable[[Grant], None] | None = (
            None if fast is None else fast.release_nowait
        )
        self._closed = False
        self._telemetry = TELEMETRY.recorder(settings.scheme, settings.namespace)
        self._lease_ttl = float(settings.lease_ttl)
        # The request of every acquire() that passes no option: built once, shared.
        self._default_request = build_request("acquire", None, {}, self._lease_ttl)
        self._wait_ewma: float | None = None  # seconds; feeds Unavailable.retry_after

    def __repr__(self) -> str:
        return (
            f"Coordinator(url={self._settings.redacted_url!r}, "
            f"namespace={self._settings.namespace!r})"
        )

    @property
    def namespace(self) -> str:
        """The namespace this coordinator's keys live in."""
        return self._settings.namespace

    @property
    def lease_ttl(self) -> float:
        """The default lease time-to-live, in seconds."""
        return self._lease_ttl

    @property
    def backend(self) -> Backend:
        """The backend instance (for diagnostics and ``agentlocks.testing``)."""
        return self._backend

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the coordinator: fail waiting requests, mark held leases lost, free all.

        Requests still waiting fail at once with an ``AgentLocksError``; leases still held
        are marked lost (their ``async with`` bodies are cancelled on remote backends,
        leaving them raises ``LeaseLost``); the backend releases what it can on the server
        and closes its connections; every background task is cancelled and awaited; later
        use raises ``ConfigError``. Idempotent, and finishes even if its caller is
        cancelled meanwhile.
        """
        if self._closed:
            return
        self._closed = True
        # The fast paths must not bypass the closed checks of the slow ones.
        self._try_acquire = None
        self._release_nowait = None
        await finish(self._close())

    async def _close(self) -> None:
        if self._renewer is not None:
            self._renewer.lose_all()  # before the backend forgets them: holders must hear it
            await self._renewer.aclose()
        try:
            await self._backend.aclose()
        finally:
            await self._tasks.aclose()

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closed

    # -- locks and semaphores ------------------------------------------------------------

    def acquire(self, key: str, **options: Unpack[LockOptions]) -> Lease:
        """Request the lock ``key``: ``async with`` it, or ``await`` it for a held ``Lease``.

        Args:
            key: Any ``str`` of 1 to 1024 UTF-8 bytes.
            **options: ``shared=False``, ``timeout=None``, ``wait=True``,
                ``max_waiting=None``, ``lease_ttl=None``, ``on_lost="cancel"``; see
                :class:`~agentlocks.LockOptions` for what each one means.

        Raises:
            InvalidKey, ConfigError, TypeError: Bad arguments, raised here before any I/O.

        Example:
            >>> import agentlocks, anyio
            >>> async def main() -> None:
            ...     async with agentlocks.connect() as coord:
            ...         async with coord.acquire("thread:42", timeout=5) as lease:
            ...             print(lease)
            >>> anyio.run(main)
            Lease(key='thread:42', token=1, shared=False, state=held)
        """
        if type(key) is not str or not key.isascii() or not 0 < len(key) <= MAX_KEY_BYTES:
            check_key(key)  # the slow, thorough check; raises InvalidKey with the reason
        if not options:  # all defaults: nothing to validate (the hot path)
            # Lease.__init__ inlined: the constructor call was ~5% of an uncontended
            # acquire+release (callgrind). Keep these stores in step with Lease.__init__.
            lease = _new_lease(Lease)
            lease._coordinator = self
            lease._resource = "l:" + key
            lease._request = self._default_request
            lease._grant = None
            lease._lost = False
            lease._released = False
            lease._scope = None
            return lease
        return Lease(self, "l:" + key, build_request("acquire", None, options, self._lease_ttl))

    def _lock_lease(self, key: str, request: Request) -> Lease:
        """``acquire(key, **options)`` for options already built into ``request``."""
        if type(key) is not str or not key.isascii() or not 0 < len(key) <= MAX_KEY_BYTES:
            check_key(key)
        return Lease(self, "l:" + key, request)

    def _lock_request(self, caller: str, options: LockOptions) -> Request:
        """Validate ``acquire`` options once, for a decorator that reuses them per call."""
        return build_request(caller, None, options, self._lease_ttl)

    def semaphore(self, name: str, capacity: int, **options: Unpack[SemaphoreOptions]) -> Lease:
        """Request one of ``capacity`` slots of ``name``: FIFO, cluster-wide.

        Options are those of :meth:`acquire` but ``shared`` (see
        :class:`~agentlocks.SemaphoreOptions`). Every caller of one name should pass the same
        ``capacity``; each request is admitted against the capacity it carries.

        Example:
            >>> import agentlocks, anyio
            >>> async def main() -> None:
            ...     async with agentlocks.connect() as coord:
            ...         async with coord.semaphore("llm-calls", capacity=8) as slot:
            ...             print(slot.key, slot.shared)
            >>> anyio.run(main)
            llm-calls True
        """
        check_key(name, "semaphore name")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"capacity must be an int >= 1, got {capacity!r}")
        request = build_request("semaphore", capacity, options, self._lease_ttl)
        return Lease(self, "s:" + name, request)

    async def _acquire(self, lease: Lease) -> None:
        """Acquire ``lease`` through the backend (the slow path: it may wait)."""
        resource, request = lease._resource, lease._request
        key, timeout, wait = resource[2:], request.timeout, request.wait
        if self._closed:
            raise ConfigError(f"{self!r} is closed")
        # timeout=0 means "do not wait at all": wait=False, reported as a timeout. (A zero
        # deadline would cancel a remote request before it even reached the server.)
        immediate = timeout == 0 or not wait
        started = time.monotonic()
        if not immediate:
            self._telemetry.waiting(resource, +1)
        try:
            if timeout is None or immediate:
                grant = await self._backend.acquire(
                    resource, shared=request.shared, capacity=request.capacity,
                    wait=not immediate, max_waiting=request.max_waiting,
                    lease_ttl=request.lease_ttl,
                )  # fmt: skip
            else:
                # The timeout is a cancellation of the backend's wait; backends guarantee
                # that a cancelled acquire leaves nothing held or queued (guarantee 7).
                with anyio.move_on_after(timeout) as scope:
                    grant = await self._backend.acquire(
                        resource, shared=request.shared, capacity=request.capacity, wait=True,
                        max_waiting=request.max_waiting, lease_ttl=request.lease_ttl,
                    )  # fmt: skip
                if scope.cancelled_caught:
                    raise AcquireTimeout(f"{key!r} was not granted within {timeout:g} s", key=key)
        except Unavailable as exc:
            if isinstance(exc, Busy) and timeout == 0 and wait:
                exc = AcquireTimeout(f"{key!r} is not free and timeout=0", key=key)
            exc.key = key
            exc.retry_after = self._retry_after()
            self._telemetry.refused(resource, key, exc, time.monotonic() - started)
            raise exc from exc.__cause__
        except BackendError as exc:
            self._telemetry.refused(resource, key, exc, time.monotonic() - started)
            raise
        except anyio.get_cancelled_exc_class():
            self._telemetry.cancelled(resource, time.monotonic() - started)
            raise
        finally:
            if not immediate:
                self._telemetry.waiting(resource, -1)
        if self._closed:
            # aclose() ran while this request waited; the backend has ended the grant.
            raise ConfigError(f"{self!r} was closed while {key!r} was being acquired")
        waited = None if immediate else time.monotonic() - started
        if waited is not None:
            self._observe_wait(waited)
        self._telemetry.granted(resource, key, grant.token, waited)
        lease._grant = grant
        if self._renewer is not None:
            self._renewer.track(lease, grant)

    async def _release(self, lease: Lease) -> None:
        grant = lease._grant
        if grant is None:
            raise RuntimeError(f"{lease!r} has not been acquired; there is nothing to release")
        if lease._released:
            if lease._lost:
                raise LeaseLost(f"the lease on {lease.key!r} was lost", key=lease.key)
            return
        lease._released = True
        self._telemetry.released(grant.resource, time.monotonic() - grant.acquired_at)
        if self._closed:
            # aclose() ended every grant (held leases count as lost from then on).
            lease._lost_at_release()
        elif self._renewer is None:
            # Leases that do not expire are never lost, so the answer needs no reading; the
            # release still runs to its end, as below.
            if self._release_finishes:
                await self._backend.release(grant)
            else:
                await finish(self._backend.release(grant))
        else:
            expired = self._renewer.untrack(grant)
            if lease._lost or expired:
                # Already lost: the answer is known (LeaseLost) and the server frees the
                # grant by itself within the lost margin. The release only hands the key on
                # sooner, so it is sent in the background: over a silent network the block
                # ends now, not after a call timeout.
                lease._lost_at_release()
                self._tasks.spawn(
                    _release_lost(self._backend, grant),
                    name="release of a lost lease",
                    key=lease.key,
                    token=grant.token,
                )
            else:
                # Run to its end even under repeated task.cancel(): a release interrupted
                # half-way would leave the key held by nobody until its TTL, and waiters
                # stalled behind it (guarantee 7).
                try:
                    if self._release_finishes:
                        held = await self._backend.release(grant)
                    else:
                        held = await finish(self._backend.release(grant))
                except Exception:
                    if not lease.lost:  # (it may have been lost while the call ran)
                        raise
                    held = False
                if held is False:
                    # The server no longer had the grant: whatever the block did ran
                    # unprotected (guarantee 6).
                    lease._lost_at_release()
        if lease._lost:
            raise LeaseLost(f"the lease on {lease.key!r} was lost while held", key=lease.key)

    async def _verify(self, lease: Lease) -> None:
        grant = lease._held_grant()
        if not lease._lost and not lease._released:
            # A lease past its local deadline is lost even if the server still has it
            # (our own loop may have stalled): the clock rule of _renewal.py.
            expired = self._renewer is not None and self._renewer.expired(grant)
            if not expired and await self._backend.verify(grant):
                return
            if self._renewer is not None:
                self._renewer.lost(grant)
            lease._mark_lost()
        state = "released" if lease._released and not lease._lost else "lost"
        raise LeaseLost(f"the lease on {lease.key!r} is {state}", key=lease.key)

    def _on_backend_lost(self, grant: Grant) -> None:
        if self._renewer is not None:
            self._renewer.lost(grant)

    # -- backpressure decorators ------------------------------------------------------------

    def serialized(self, key: KeySpec, /, **options: Unpack[LockOptions]) -> Serialized:
        """Decorate an ``async def`` so calls with the same key run one at a time, FIFO.

        Args:
            key: A template formatted from the call's bound arguments, defaults applied
                (``"user:{user_id}"``, ``"{tenant}:{thread_id}"``, ``"{req.user_id}"``), or
                a callable taking the same arguments and returning the key.
            **options: Those of :meth:`acquire` (:class:`~agentlocks.LockOptions`).

        Raises:
            ConfigError: A malformed template or a bad option, here.
            TypeError: When decorating: the function is not ``async def``, or the template
                names a parameter it does not have. A key that formats to something
                invalid raises ``InvalidKey`` when called, before waiting.

        Example:
            >>> import agentlocks, anyio
            >>> coord = agentlocks.connect()
            >>> @coord.serialized("{tenant}:{thread_id}")
            ... async def run(tenant: str, thread_id: int) -> str:
            ...     info = await coord.inspect(f"{tenant}:{thread_id}")
            ...     return f"held={info.held}"
            >>> anyio.run(run, "acme", 7)
            'held=True'
        """
        return Serialized(self, key, options)

    def backpressure(
        self,
        name: str,
        *,
        capacity: int,
        **options: Unpack[BackpressureOptions],
    ) -> Backpressure:
        """Cap concurrent calls cluster-wide (``semaphore(name, capacity)``), failing fast.

        A call beyond ``capacity`` waits FIFO; it fails with ``QueueFull`` if
        ``max_waiting`` calls already wait, or ``AcquireTimeout`` after ``timeout`` seconds.
        Both are ``Unavailable`` with a ``retry_after`` estimate (HTTP 503 under
        ``agentlocks.fastapi``). Stack it *below* :meth:`serialized` (see
        ``agentlocks.decorators``). The result also offers ``async with limiter.slot():``.

        Args:
            name: The semaphore name (``coord.inspect(name, semaphore=True)`` shows it).
            capacity: At most this many calls hold a slot at once, cluster-wide.
            **options: ``max_waiting``, ``timeout``, ``lease_ttl`` and ``on_lost``, as for
                :meth:`semaphore` (:class:`~agentlocks.SemaphoreOptions`; no ``wait``).

        Example:
            >>> import agentlocks, anyio
            >>> coord = agentlocks.connect()
            >>> @coord.backpressure("ingest", capacity=5, max_waiting=50, timeout=30)
            ... async def ingest(doc: str) -> int:
            ...     return len(doc)
            >>> anyio.run(ingest, "abc")
            3
        """
        return Backpressure(self, name, capacity, options)

    # -- retry_after estimate ---------------------------------------------------------------

    def _observe_wait(self, seconds: float) -> None:
        previous = self._wait_ewma
        self._wait_ewma = seconds if previous is None else previous + 0.2 * (seconds - previous)

    def _retry_after(self) -> float:
        """Estimate, for an ``Unavailable``, when a retry is worth it.

        The recent wait of requests that were granted after queueing (a moving average,
        fed only on the slow path, so the uncontended path pays nothing): a request
        retrying after that long meets a queue about as long as the ones that just got
        through. One second until anything was measured; at least 1 ms.
        """
        if self._wait_ewma is None:
            return 1.0
        return max(self._wait_ewma, 0.001)

    # -- observability and registries ----------------------------------------------------------

    async def inspect(self, key: str, *, semaphore: bool = False) -> KeyInfo:
        """Return the holders of a lock key (or of a semaphore name) and its waiting count.

        Example:
            >>> import agentlocks, anyio
            >>> async def main() -> None:
            ...     async with agentlocks.connect() as coord:
            ...         async with coord.acquire("k"):
            ...             info = await coord.inspect("k")
            ...             print(info.held, len(info.holders), info.waiting)
            >>> anyio.run(main)
            True 1 0
        """
        check_key(key)
        holders, waiting = await self._backend.inspect(("s:" if semaphore else "l:") + key)
        return KeyInfo(key=key, holders=holders, waiting=waiting)

    def registry(self, name: str) -> Registry:
        """Return the reader/writer lock and published generation of registry ``name``."""
        check_key(name, "registry name")
        return Registry(self, name)
