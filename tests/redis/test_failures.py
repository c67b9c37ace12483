"""A Redis server that pauses, restarts, refuses, stays silent, or rejects a password."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

import agentlocks
from agentlocks import BackendError, Lease, LeaseLost
from tests.support.servers import free_port, silent_server
from tests.support.waiting import until_waiting

from .conftest import Connect, Server, start


def chain(exc: BaseException) -> str:
    """Every message and repr along an exception's cause/context chain."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


async def test_lease_lost_while_the_server_is_paused_past_its_ttl(
    server: Server, connect: Connect
) -> None:
    """A pause past the TTL: lost, body cancelled, LeaseLost; the new holder's token is greater."""
    holder = connect(server.url, socket_timeout=0.25)
    other = connect(server.url)
    admin = aioredis.Redis.from_url(server.url)
    reached_end = False
    taken: asyncio.Task[Lease] | None = None
    try:
        with pytest.raises(LeaseLost):
            async with holder.acquire("paused", lease_ttl=1.0) as lease:
                await admin.execute_command("CLIENT", "PAUSE", 2500, "ALL")
                # Queued behind the pause: it runs once the server resumes, by which time
                # the holder's lease (1 s, unrenewed) has run out.
                taken = start(other.acquire("paused", timeout=20))
                await asyncio.sleep(10)  # must be cancelled by the lost lease
                reached_end = True
        assert lease.lost and not reached_end
        assert taken is not None
        after = await asyncio.wait_for(taken, 20)
        assert after.token > lease.token
        await after.release()
    finally:
        await admin.aclose()


async def test_restart_while_holding_and_waiting(server: Server, connect: Connect) -> None:
    """State lost: the holder's lease is lost, the waiter fails loudly, nothing is granted twice."""
    first, second = connect(server.url), connect(server.url)
    lease = await first.acquire("restart", lease_ttl=1.5)
    waiter = start(second.acquire("restart", lease_ttl=1.5))
    await until_waiting(first, "restart", 1)
    await server.restart()
    # The waiter either learns that its request vanished, or (only if the holder's loss
    # was handled first) is granted afresh; it never hangs.
    outcome = (await asyncio.wait_for(asyncio.gather(waiter, return_exceptions=True), 15))[0]
    if isinstance(outcome, Lease):
        assert outcome.token > lease.token
        await outcome.release()
    else:
        assert isinstance(outcome, BackendError), outcome
    for _ in range(300):  # the holder's next renewal finds its grant gone
        if lease.lost:
            break
        await asyncio.sleep(0.01)
    assert lease.lost
    with pytest.raises(LeaseLost):
        await lease.release()
    async with second.acquire("restart", timeout=10) as fresh:
        assert fresh.token > lease.token  # tokens survive the loss of every key


async def test_waiters_fail_when_the_server_stays_down(server: Server, connect: Connect) -> None:
    """With the server gone for good, a queued request raises BackendError instead of hanging."""
    holder, other = connect(server.url), connect(server.url, socket_timeout=0.5)
    await holder.acquire("gone", lease_ttl=1.0)
    waiter = start(other.acquire("gone", lease_ttl=1.0))
    await until_waiting(other, "gone", 1)
    server.kill()
    with pytest.raises(BackendError):
        await asyncio.wait_for(waiter, 15)
    with pytest.raises(BackendError):
        await other.acquire("gone", wait=False)


async def test_refused_connection_raises_backend_error_quickly(connect: Connect) -> None:
    """Nothing listens on the port: BackendError, with the driver's error as its cause."""
    coord = connect(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=2)
    began = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await coord.acquire("k")
    assert time.monotonic() - began < 2
    assert isinstance(caught.value.__cause__, RedisError | OSError)


async def test_silent_server_raises_backend_error_within_socket_timeout(connect: Connect) -> None:
    """A server that never answers: BackendError after socket_timeout, not a hang."""
    async with silent_server() as port:
        coord = connect(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
        with pytest.raises(BackendError, match=r"did not answer within 0\.3 s"):
            await asyncio.wait_for(coord.acquire("k"), 5)
        with pytest.raises(BackendError):
            await asyncio.wait_for(coord.inspect("k"), 5)


async def test_password_never_appears_in_errors_or_reprs(redis_url: str, namespace: str) -> None:
    """A password in the URL shows in no repr and in no message of the error chain."""
    secret = "s3cret-Pa55word"
    host = redis_url.split("://", 1)[1]
    for url in (f"redis://:{secret}@{host}", f"redis://:{secret}@127.0.0.1:{free_port()}/0"):
        coord = agentlocks.connect(url, namespace=namespace)
        try:
            assert secret not in repr(coord) and secret not in repr(coord.backend)
            with pytest.raises(BackendError) as caught:  # wrong password, or refused
                await coord.acquire("k")
            assert secret not in chain(caught.value)
        finally:
            await coord.aclose()
