"""agentlocks.fastapi pieces on their own: error mapping, dependency keys, the middleware."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

import agentlocks
from agentlocks import (
    AcquireTimeout,
    AgentLocksError,
    BackendError,
    Busy,
    ConfigError,
    InvalidKey,
    LeaseLost,
    QueueFull,
    ThreadBusy,
    Unavailable,
)
from agentlocks.fastapi import (
    CancelOnDisconnect,
    backpressure,
    error_response,
    install,
    readiness,
    serialized,
)


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0.001, "1"), (0.5, "1"), (1.0, "1"), (1.01, "2"), (2.2, "3"), (30.0, "30"),
     (float("inf"), "1"), (float("nan"), "1")],
)  # fmt: skip
def test_retry_after_is_whole_seconds_and_at_least_one(retry_after: float, header: str) -> None:
    """Retry-After rounds the estimate up to whole seconds, never below 1."""
    response = error_response(QueueFull("full", key="k", retry_after=retry_after))
    assert response.status_code == 503
    assert response.headers["retry-after"] == header


@pytest.mark.parametrize(
    ("exc", "status"),
    [(Busy("held", key="k"), 503), (QueueFull("full", key="k"), 503),
     (AcquireTimeout("slow", key="k"), 503), (Unavailable("no", key="k"), 503),
     (ThreadBusy("running", key="k"), 409), (LeaseLost("gone", key="k"), 500)],
)  # fmt: skip
def test_error_response_status_and_body(exc: AgentLocksError, status: int) -> None:
    """Each error maps to its status with ``{"error": code, "detail": message, "key": key}``."""
    response = error_response(exc)
    assert response.status_code == status
    assert response.body == (
        f'{{"error":"{exc.code}","detail":"{exc.message}","key":"k"}}'.encode()
    )
    assert ("retry-after" in response.headers) == (status == 503)


def test_error_response_key_is_null_when_there_is_none() -> None:
    """An error without a key has ``"key": null``."""
    assert error_response(ThreadBusy("running")).body.endswith(b'"key":null}')


async def test_install_maps_errors_on_a_plain_starlette_app() -> None:
    """install() works on Starlette too; other exceptions are left to the app."""

    async def busy(request: Request) -> None:
        raise AcquireTimeout("'ingest' was not granted within 1 s", key="ingest", retry_after=4)

    app = Starlette(routes=[Route("/busy", busy)])
    install(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/busy")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "4"
    assert response.json()["error"] == "acquire_timeout"


async def test_app_errors_pass_through_the_middleware_unwrapped() -> None:
    """An unhandled error leaves the middleware as itself, not inside an ExceptionGroup."""
    app = FastAPI()
    install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise LookupError("boom")

    transport = httpx.ASGITransport(app=app)  # raises app exceptions in the client
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.raises(LookupError, match="boom"):
            await client.get("/boom")


async def test_middleware_passes_other_scopes_straight_through() -> None:
    """Lifespan and websocket scopes reach the app with the server's own receive and send."""
    seen: list[tuple[str, Any, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["type"], receive, send))

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None: ...

    await CancelOnDisconnect(app)({"type": "lifespan"}, receive, send)
    assert seen == [("lifespan", receive, send)]


async def test_a_body_the_app_reads_after_the_watch_began_still_arrives() -> None:
    """A request announced without a body that sends one anyway loses nothing."""
    chunks: list[Message] = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    await CancelOnDisconnect(app)({"type": "http", "headers": []}, receive, send)
    assert sent[-1] == {"type": "http.response.body", "body": b"abcd"}


def _request(path_params: dict[str, Any]) -> Request:
    return Request({"type": "http", "path": "/x", "headers": [], "path_params": path_params})


async def test_dependency_template_reads_path_parameters() -> None:
    """serialized(coord, "user:{user_id}") locks the key formatted from the path."""
    coord = agentlocks.connect()
    hold = serialized(coord, "user:{user_id}")
    gen = hold(_request({"user_id": "u1"}))
    lease = await gen.__anext__()
    assert lease.key == "user:u1" and (await coord.inspect("user:u1")).held
    with pytest.raises(StopAsyncIteration):
        await gen.__anext__()
    assert not (await coord.inspect("user:u1")).held


async def test_dependency_template_naming_no_path_parameter_is_a_type_error() -> None:
    """A template field that is not a path parameter of the request says so."""
    hold = serialized(agentlocks.connect(), "user:{user}")
    with pytest.raises(TypeError, match="names user, which is not a path parameter"):
        await hold(_request({"user_id": "u1"})).__anext__()


async def test_dependency_key_callable_gets_the_request() -> None:
    """A callable key receives the Request and its result is the key."""
    coord = agentlocks.connect()
    hold = serialized(coord, lambda request: f"tenant:{request.path_params['t']}")
    gen = hold(_request({"t": "acme"}))
    assert (await gen.__anext__()).key == "tenant:acme"
    await gen.aclose()
    assert not (await coord.inspect("tenant:acme")).held


async def test_dependency_invalid_key_is_invalid_key() -> None:
    """A key formatting to an empty string is InvalidKey, raised before waiting."""
    hold = serialized(agentlocks.connect(), "{user_id}")
    with pytest.raises(InvalidKey):
        await hold(_request({"user_id": ""})).__anext__()


def test_dependency_factories_check_their_arguments() -> None:
    """Bad options and wrong objects fail when the dependency is made, not per request."""
    coord = agentlocks.connect()
    with pytest.raises(ConfigError):
        serialized(coord, "k", timeout=-1)
    with pytest.raises(ConfigError):
        serialized(coord, "user:{")
    with pytest.raises(TypeError):
        serialized(coord, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword argument 'capacity'"):
        serialized(coord, "k", capacity=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        backpressure(coord.semaphore("s", 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        readiness(coord, "ingest")  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here now


@pytest.mark.parametrize("scheme", ["redis", "postgresql"])
async def test_readiness_is_503_when_the_backend_is_unreachable(scheme: str) -> None:
    """/ready answers 503 with backend "unreachable" when the server refuses connections."""
    try:
        coord = agentlocks.connect(f"{scheme}://127.0.0.1:{_closed_port()}/0")
    except ConfigError as exc:
        pytest.skip(f"no {scheme} backend here: {exc}")
    app = FastAPI()
    cap = coord.backpressure("ingest", capacity=1, max_waiting=1)
    app.add_api_route("/ready", readiness(coord, cap, timeout=10))
    try:
        with pytest.raises(BackendError):
            await coord.inspect("ingest")  # the premise: the backend really is unreachable
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/ready")
    finally:
        await coord.aclose()
    assert response.status_code == 503
    assert response.json() == {"ready": False, "backend": "unreachable", "capacities": {}}
