"""FastAPI (and Starlette) integration: HTTP errors, dependencies, readiness, disconnects.

``import agentlocks`` imports neither this module nor FastAPI: import it explicitly. It
needs ``pip install 'agentlocks[fastapi]'`` (plain Starlette is enough).

* :func:`install` maps ``Unavailable`` to 503 with ``Retry-After`` and ``ThreadBusy`` to 409,
  with the body ``{"error": <code>, "detail": <message>, "key": <key or null>}``, and (by
  default) cancels a request's handling when its client disconnects.
* :func:`serialized` and :func:`backpressure` are the decorators as dependencies, for code
  that prefers ``Depends``.
* :func:`readiness` is an endpoint for load balancers: 503 while a capacity's queue is full
  or the backend is unreachable.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup
from typing_extensions import Unpack

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "agentlocks.fastapi needs FastAPI (or Starlette): pip install 'agentlocks[fastapi]'"
    ) from exc

from ._lease import Lease
from ._options import LockOptions
from .coordinator import Coordinator
from .decorators import Backpressure, _Holds, _measured, template_fields
from .errors import AgentLocksError, BackendError, ThreadBusy, Unavailable

__all__ = [
    "CancelOnDisconnect",
    "backpressure",
    "error_response",
    "install",
    "readiness",
    "serialized",
]

_DISCONNECT: Final[Message] = {"type": "http.disconnect"}


# -- errors ----------------------------------------------------------------------------------


def error_response(exc: AgentLocksError) -> JSONResponse:
    """The HTTP response ``install()`` sends for ``exc``.

    ``Unavailable`` -> 503 with ``Retry-After`` (whole seconds, at least 1), ``ThreadBusy``
    -> 409, anything else -> 500; the body is ``{"error", "detail", "key"}``.

    Example:
        >>> from agentlocks import QueueFull
        >>> response = error_response(QueueFull("queue is full", key="ingest", retry_after=2.2))
        >>> response.status_code, response.headers["retry-after"], response.body
        (503, '3', b'{"error":"queue_full","detail":"queue is full","key":"ingest"}')
    """
    body = {"error": exc.code, "detail": exc.message, "key": exc.key}
    if isinstance(exc, Unavailable):
        seconds = exc.retry_after if math.isfinite(exc.retry_after) else 1.0
        headers = {"Retry-After": str(max(1, math.ceil(seconds)))}
        return JSONResponse(body, status_code=503, headers=headers)
    return JSONResponse(body, status_code=409 if isinstance(exc, ThreadBusy) else 500)


async def _handle(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AgentLocksError)  # registered for AgentLocksError subclasses only
    return error_response(exc)


def install(app: Starlette, *, cancel_on_disconnect: bool = True) -> None:
    """Make ``app`` answer agentlocks errors with 503/409 and free locks of departed clients.

    Args:
        app: A ``FastAPI`` or ``Starlette`` application, before it starts serving.
        cancel_on_disconnect: Add :class:`CancelOnDisconnect`, so that a request whose client
            went away stops waiting in queues and releases what it holds at once, instead of
            running to completion for nobody. Pass False to let handlers run on.

    Example:
        >>> from fastapi import FastAPI
        >>> app = FastAPI()
        >>> install(app)
    """
    app.add_exception_handler(Unavailable, _handle)
    app.add_exception_handler(ThreadBusy, _handle)
    if cancel_on_disconnect:
        app.add_middleware(CancelOnDisconnect)


# -- client disconnects ----------------------------------------------------------------------


class CancelOnDisconnect:
    """ASGI middleware: cancel an HTTP request's handling when its client disconnects.

    Servers such as uvicorn report a disconnect only to a handler that reads from the
    connection; a handler waiting for a lock never does, so without this its request would
    keep its place in the queue (counting against ``max_waiting``) and later run and hold a
    slot for a client that is gone. Under overload, when clients give up, that is most of the
    queue. Cancellation is safe: agentlocks leaves no lock held and no entry queued when a
    wait or a hold is cancelled (API.md, guarantee 7).

    The disconnect is watched once the request body has been received (at once for a request
    without a body; FastAPI reads a declared body before it calls the endpoint). After the
    response is complete nothing is cancelled, so background tasks run as usual.
    """

    __slots__ = ("app",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            watch = _Watch(receive, send, tg)
            if not _has_body(scope):
                watch.start()
            try:
                await self.app(scope, watch.receive, watch.send)
            except Exception as exc:
                # Raised outside the task group, or it would arrive wrapped in an
                # ExceptionGroup that the server's error handling does not expect.
                error = exc
            finally:
                # The app is done (or cancelled): stop the watcher. If the watcher cancelled
                # us, the task group absorbs that cancellation and we return normally.
                tg.cancel_scope.cancel()
        if error is not None:
            raise error


def _has_body(scope: Scope) -> bool:
    """Whether the request may carry a body (RFC 9112: Content-Length > 0 or chunked)."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class _Watch:
    """One request's receive/send, with a task that owns ``receive`` once the body is in.

    Invariant: at any moment exactly one party calls the server's ``receive``: the app until
    it has the last body chunk, then only the watcher task, which hands any message it reads
    to the app through ``_inbox`` and, on ``http.disconnect`` before the response is
    complete, cancels the request. Two concurrent readers would race for body chunks.
    """

    __slots__ = (
        "_arrival",
        "_complete",
        "_gone",
        "_inbox",
        "_receive",
        "_send",
        "_tg",
        "_watching",
    )

    def __init__(self, receive: Receive, send: Send, tg: TaskGroup) -> None:
        self._receive = receive
        self._send = send
        self._tg = tg
        self._watching = False
        self._complete = False  # the response has been sent in full
        self._gone = False  # the watcher saw http.disconnect (or receive failed)
        self._inbox: list[Message] = []  # messages the watcher read for the app
        self._arrival = anyio.Event()  # set (and replaced) whenever _inbox or _gone changes

    def start(self) -> None:
        self._watching = True
        self._tg.start_soon(self._run)

    def _wake(self) -> None:
        self._arrival.set()
        self._arrival = anyio.Event()

    async def _run(self) -> None:
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    break
                self._inbox.append(message)  # a body we did not expect: hand it over
                self._wake()
        except Exception:
            # The server's receive failed: stop watching, and let the app's next receive see
            # a disconnect, without cancelling a request that may still be answered.
            self._gone = True
            self._wake()
            return
        self._gone = True
        self._wake()
        # Servers also answer http.disconnect once the response is complete; that is not a
        # departed client, and cancelling then would kill the response's background tasks.
        if not self._complete:
            self._tg.cancel_scope.cancel()

    async def receive(self) -> Message:
        if not self._watching:
            message = await self._receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                self.start()
            return message
        while not self._inbox:
            if self._gone:
                return dict(_DISCONNECT)
            await self._arrival.wait()
        return self._inbox.pop(0)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            # Set before sending: the server may wake the watcher as part of this send.
            self._complete = True
        await self._send(message)


# -- dependencies ----------------------------------------------------------------------------


def serialized(
    coord: Coordinator,
    key: str | Callable[[Request], str],
    /,
    **options: Unpack[LockOptions],
) -> Callable[[Request], AsyncIterator[Lease]]:
    """A dependency that holds the lock ``key`` for the request; it yields the ``Lease``.

    ``key`` is a template formatted from the route's path parameters
    (``"user:{user_id}"`` for ``/users/{user_id}/...``) or a callable taking the
    ``Request``. ``options`` are those of ``coord.acquire`` (:class:`~agentlocks.LockOptions`),
    checked here. With FastAPI's default dependency
    scope the lock is released after the response has been sent (a ``StreamingResponse``
    included); ``Depends(..., scope="function")`` releases it when the endpoint returns.

    Example:
        >>> import agentlocks
        >>> from fastapi import Depends, FastAPI
        >>> coord = agentlocks.connect()
        >>> app = FastAPI()
        >>> @app.post("/users/{user_id}/ingest",
        ...           dependencies=[Depends(serialized(coord, "user:{user_id}"))])
        ... async def ingest(user_id: str) -> dict[str, str]:
        ...     return {"user": user_id}
    """
    lock_request = coord._lock_request("serialized", options)  # checked now; no I/O
    lock_lease, max_waiting = coord._lock_lease, lock_request.max_waiting
    key_of = _request_key(key)
    holds = _Holds()  # this dependency's hold times, for retry_after (as the decorator's)

    async def hold_lock(request: Request) -> AsyncIterator[Lease]:
        lease = lock_lease(key_of(request), lock_request)
        async with _measured(lease, holds, 1, max_waiting):
            yield lease

    return hold_lock


def backpressure(limiter: Backpressure, /) -> Callable[[], AsyncIterator[Lease]]:
    """A dependency that holds one slot of ``limiter`` (``coord.backpressure(...)``).

    List it *after* the :func:`serialized` dependency (FastAPI resolves ``dependencies``
    in order) for the same reason the decorators stack that way. ``QueueFull`` and
    ``AcquireTimeout`` become 503 under :func:`install`.

    Example:
        >>> import agentlocks
        >>> from fastapi import Depends, FastAPI
        >>> coord = agentlocks.connect()
        >>> llm = coord.backpressure("llm", capacity=8, max_waiting=100, timeout=30)
        >>> app = FastAPI()
        >>> @app.post("/complete", dependencies=[Depends(backpressure(llm))])
        ... async def complete() -> dict[str, bool]:
        ...     return {"ok": True}
    """
    if not isinstance(limiter, Backpressure):
        raise TypeError(f"expected coord.backpressure(...), got {limiter!r}")

    async def hold_slot() -> AsyncIterator[Lease]:
        async with limiter.slot() as lease:
            yield lease

    return hold_slot


def _request_key(key: str | Callable[[Request], str]) -> Callable[[Request], Any]:
    if not isinstance(key, str):
        if not callable(key):
            raise TypeError(f"key must be a template str or a callable, got {key!r}")
        return key
    names = template_fields(key)

    def template_key(request: Request) -> str:
        params = request.path_params
        missing = names - params.keys()
        if missing:
            raise TypeError(
                f"key template {key!r} names {', '.join(sorted(missing))}, which is not a "
                f"path parameter of {request.url.path!r}; pass a callable for other keys"
            )
        return key.format_map(params)

    return template_key


# -- readiness -------------------------------------------------------------------------------


def readiness(
    coord: Coordinator, /, *limiters: Backpressure, timeout: float = 2.0
) -> Callable[[Request], Awaitable[JSONResponse]]:
    """An endpoint for load-balancer readiness probes.

    It answers 200 while every capacity in ``limiters`` has room in its queue and the
    backend answers within ``timeout`` seconds; otherwise 503 (with ``Retry-After`` when a
    queue is full), so the balancer sends traffic to other replicas instead of into a queue
    that can only reject it. The body reports each capacity's holders and waiters.

    Example:
        >>> import agentlocks
        >>> from fastapi import FastAPI
        >>> coord = agentlocks.connect()
        >>> ingest = coord.backpressure("ingest", capacity=5, max_waiting=50, timeout=30)
        >>> app = FastAPI()
        >>> app.add_api_route("/ready", readiness(coord, ingest))
    """
    for limiter in limiters:
        if not isinstance(limiter, Backpressure):
            raise TypeError(f"expected coord.backpressure(...) objects, got {limiter!r}")

    async def ready(request: Request) -> JSONResponse:
        capacities: dict[str, dict[str, Any]] = {}
        backend = "ok"
        retry_after: float | None = None
        try:
            with anyio.fail_after(timeout):
                if not limiters:  # still prove the backend answers
                    await coord.inspect("agentlocks:readiness")
                for limiter in limiters:
                    info = await coord.inspect(limiter.name, semaphore=True)
                    bound = limiter.max_waiting
                    full = bound is not None and info.waiting >= bound
                    if full:
                        retry_after = max(retry_after or 0.0, limiter.retry_after or 1.0)
                    capacities[limiter.name] = {
                        "capacity": limiter.capacity, "holders": len(info.holders),
                        "waiting": info.waiting, "max_waiting": bound, "full": full,
                    }  # fmt: skip
        except (BackendError, OSError, TimeoutError):
            backend = "unreachable"
        ok = backend == "ok" and retry_after is None
        body = {"ready": ok, "backend": backend, "capacities": capacities}
        headers = None
        if retry_after is not None:
            headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
        return JSONResponse(body, status_code=200 if ok else 503, headers=headers)

    return ready
