"""A real uvicorn server per test, on a free loopback port (coord: tests/conftest.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

Serve = Callable[[ASGIApp], AbstractAsyncContextManager[httpx.AsyncClient]]

#: Seconds an HTTP call may take before the client gives up: a hang fails, it never blocks.
CLIENT_TIMEOUT = 20.0


@asynccontextmanager
async def _serve(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    # The socket is bound here and handed to uvicorn, so no other process can take the port
    # between choosing it and listening on it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", ws="none", http="h11", log_config=None, log_level="warning",
        access_log=False, timeout_graceful_shutdown=2,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task  # startup failed: raise its error
                pytest.fail("uvicorn exited before it started")
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=CLIENT_TIMEOUT
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
def serve() -> Serve:
    """``async with serve(app) as client``: app served by uvicorn; client bound to its URL."""
    return _serve
