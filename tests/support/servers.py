"""What the tests need from servers: the rig's gate, free ports, a server that never answers.

:func:`unavailable` is the suite's one policy for a missing server: skip the test locally,
fail it with ``CI=true`` (where ``scripts/test`` must have started everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import NoReturn


def unavailable(message: str) -> NoReturn:
    """Skip the test (or, with CI=true, fail it): something it needs is not up."""
    # Imported here, not at the top: benchmarks/redis_locks.py starts deployments (which use
    # free_port) and must not need pytest.
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_env(name: str) -> str:
    """The value of ``$name``, set by scripts/test; skip (or, with CI=true, fail) if unset."""
    value = os.environ.get(name)
    if not value:
        unavailable(f"${name} is not set (run the suite through scripts/test)")
    return value


def free_port(highest: int = 65535) -> int:
    """A loopback TCP port nothing listens on right now, at most ``highest``.

    The port is released before it is returned: another process may take it in between, so
    a server started on it must be retried (or the test must not care, as for "refused").
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port <= highest:
            return port


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server on loopback that accepts connections and never answers; yields its port."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # kept open (and referenced) until the server closes

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()
