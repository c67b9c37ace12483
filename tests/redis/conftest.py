"""Fixtures of the Redis backend's adversarial tests (real servers, never a fake).

``connect``, ``coord`` and ``namespace`` are tests/conftest.py's, on the rig's Redis.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from agentlocks import Lease
from tests.support.coordinators import Connect as Connect
from tests.support.servers import free_port as free_port
from tests.support.servers import require_env

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_url() -> str:
    """The rig's Redis URL (skipped, or failed on CI, when the server is not up)."""
    return require_env("AGENTLOCKS_TEST_REDIS_URL")


@pytest.fixture
def backend_url(redis_url: str) -> str:
    """Coordinators of ``connect`` and ``coord`` use the rig's Redis unless given a URL."""
    return redis_url


@pytest_asyncio.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the rig's server, for looking at keys and clients."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


class Server:
    """A throwaway redis-server of this test's own: it may be paused, killed, restarted."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (empty: nothing is persisted) and wait until it answers PING."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL it: every key, script and connection is gone at once."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    async def restart(self) -> None:
        """Kill it and start an empty one on the same port."""
        self.kill()
        await asyncio.to_thread(self.start)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A throwaway redis-server started from $AGENTLOCKS_TEST_REDIS_SERVER."""
    srv = Server(require_env("AGENTLOCKS_TEST_REDIS_SERVER"), tmp_path)
    srv.start()
    yield srv
    srv.kill()


async def client_names(client: aioredis.Redis, prefix: str) -> list[str]:
    """The names of the server's client connections that start with ``prefix``."""
    clients = await client.client_list()
    return [c["name"] for c in clients if c["name"].startswith(prefix)]


def start(request: Awaitable[Lease]) -> asyncio.Task[Lease]:
    """Wait for ``request`` (``coord.acquire(...)``) in a new task; its result is the lease."""

    async def wait_for_it() -> Lease:
        return await request

    return asyncio.create_task(wait_for_it())
