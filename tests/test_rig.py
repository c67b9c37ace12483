"""Smoke tests for the test rig: the servers started by scripts/test are reachable.

Stdlib sockets only, so a failure here means "rig broken", never "driver broken".
"""

from __future__ import annotations

import socket
import struct
from urllib.parse import urlsplit

import pytest

from tests.support.servers import require_env

_SSL_REQUEST_CODE = 80877103  # PostgreSQL protocol: SSLRequest magic number


def _server_address(env_var: str) -> tuple[str, int]:
    """Return (host, port) from the URL in ``env_var``; fail on CI, skip elsewhere, if unset."""
    url = require_env(env_var)
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    return parts.hostname, parts.port


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.redis
def test_redis_url_answers_ping() -> None:
    """The server at AGENTLOCKS_TEST_REDIS_URL answers PING with +PONG."""
    address = _server_address("AGENTLOCKS_TEST_REDIS_URL")
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert _recv_exactly(sock, len(b"+PONG\r\n")) == b"+PONG\r\n"


@pytest.mark.postgres
def test_postgres_port_accepts_connection() -> None:
    """The AGENTLOCKS_TEST_POSTGRES_URL port accepts TCP and answers an SSLRequest like PG."""
    address = _server_address("AGENTLOCKS_TEST_POSTGRES_URL")
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(struct.pack("!ii", 8, _SSL_REQUEST_CODE))
        # A PostgreSQL server replies with a single byte: N (no SSL) or S (SSL available).
        assert _recv_exactly(sock, 1) in (b"N", b"S")
