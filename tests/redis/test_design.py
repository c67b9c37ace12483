"""The Redis backend's design promises: key layout, expiry, scripts, connections, waiting."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

import agentlocks
from agentlocks import BackendError, ConfigError, Lease, LeaseLost
from agentlocks.backends.redis import RedisBackend
from agentlocks.backends.redis._scripts import generation_key, lock_keys
from tests.support.waiting import until_waiting

from .conftest import Connect, client_names, start


def test_all_keys_of_a_lock_share_one_cluster_slot() -> None:
    """Braces in user keys cannot split a lock across slots; namespaces get their own keys."""
    for key in ("plain", "{user}:1", "a{b}c", "{}", "}{", "ключ{x}"):
        keys = lock_keys("ns", "l:" + key)
        assert len({key_slot(k) for k in keys}) == 1, key
        assert lock_keys("other-ns", "l:" + key)[0] != keys[0]
    assert lock_keys("ns", "l:x") != lock_keys("ns", "s:x")  # locks and semaphores apart


async def test_every_key_written_expires_by_itself(
    connect: Connect, namespace: str, raw: aioredis.Redis
) -> None:
    """Held, queued and idle: every key the backend wrote carries a TTL."""
    coord = connect()
    keys = [k.decode() for k in lock_keys(namespace, "l:ttl")]
    lease = await coord.acquire("ttl")
    assert 0 < await raw.pttl(keys[0]) <= 30_000  # the uncontended fast path too
    waiter = start(coord.acquire("ttl", shared=True))
    await until_waiting(coord, "ttl", 1)
    assert await raw.exists(*keys) == 4
    assert all(ttl > 0 for ttl in [await raw.pttl(k) for k in keys])
    await lease.release()
    await (await asyncio.wait_for(waiter, 10)).release()
    # Idle: only the last token is left, and it expires too.
    assert [await raw.exists(k) for k in keys] == [0, 0, 0, 1]
    assert 0 < await raw.pttl(keys[3]) <= 600_000
    async with coord.registry("tools").write():
        pass
    # The one exception, on purpose: a registry's generation never expires (it would read
    # as 0 again, and generations only grow).
    assert await raw.pttl(generation_key(namespace, "tools").decode()) == -1
    await raw.delete(generation_key(namespace, "tools").decode())


async def test_scripts_are_reloaded_after_the_server_lost_them(
    connect: Connect, raw: aioredis.Redis
) -> None:
    """SCRIPT FLUSH (as after a restart): calls and batched renewals load them again."""
    coord = connect()
    async with coord.acquire("flush"):
        pass
    await raw.script_flush()
    async with coord.acquire("flush", lease_ttl=0.6) as lease:
        await raw.script_flush()
        await asyncio.sleep(1.0)  # renewals ran in between, through a pipeline
        await lease.verify()


async def test_a_thousand_waiters_use_a_bounded_number_of_connections(
    connect: Connect, raw: aioredis.Redis
) -> None:
    """1,000 tasks waiting on 1,000 keys: at most max_connections + 1 inbox connections."""
    holder, waiting = connect(), connect(max_connections=4)
    keys = [f"budget-{i}" for i in range(1000)]
    leases = await asyncio.gather(*(holder.acquire(key) for key in keys))
    tasks = [start(waiting.acquire(key)) for key in keys]
    backend = waiting.backend
    assert isinstance(backend, RedisBackend)
    for key in keys:  # every request is queued on the server
        await until_waiting(holder, key, 1)
    names = await client_names(raw, backend.client_name)
    assert names.count(backend.client_name + ":inbox") == 1
    assert len(names) <= 4 + 1, names
    await asyncio.gather(*(lease.release() for lease in leases))
    granted = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await asyncio.gather(*(lease.release() for lease in granted))


async def test_a_grant_missed_by_the_inbox_is_collected_on_reconnect(
    connect: Connect, raw: aioredis.Redis
) -> None:
    """A grant published while the inbox is away is found when it resubscribes."""
    holder, waiting = connect(), connect()
    lease = await holder.acquire("missed")
    waiter = start(waiting.acquire("missed"))
    await until_waiting(holder, "missed", 1)
    backend = waiting.backend
    assert isinstance(backend, RedisBackend)
    inbox = backend._room.inbox
    deliver = inbox._deliver
    inbox._deliver = lambda request_id, token: None  # this grant's message is lost
    await lease.release()
    while (await holder.inspect("missed")).holders == ():
        await asyncio.sleep(0.005)
    assert not waiter.done()
    inbox._deliver = deliver
    (inbox_id,) = [
        c["id"] for c in await raw.client_list() if c["name"] == backend.client_name + ":inbox"
    ]
    await raw.client_kill_filter(_id=inbox_id)
    # The default lease_ttl is 30 s: the keep-alive would only look in 10 s. Getting the
    # lock now shows the resubscription looked at once.
    got = await asyncio.wait_for(waiter, 5)
    await got.release()


async def test_a_queued_request_outlives_its_deadline_while_its_waiter_lives(
    connect: Connect,
) -> None:
    """Keep-alives extend a waiter's queue deadline for as long as it waits."""
    coord = connect()
    lease = await coord.acquire("patient", lease_ttl=0.6)
    waiter = start(coord.acquire("patient", lease_ttl=0.6))
    await asyncio.sleep(2.0)  # more than three queue deadlines
    assert (await coord.inspect("patient")).waiting == 1
    await lease.release()
    await (await asyncio.wait_for(waiter, 10)).release()


async def test_aclose_ends_grants_and_waits_loudly(connect: Connect, namespace: str) -> None:
    """Closing: held leases are lost (body cancelled), waiters fail, the server forgets both."""
    coord, observer = connect(), connect()
    entered = asyncio.Event()

    async def hold() -> None:
        async with coord.acquire("closing"):
            entered.set()
            await asyncio.sleep(30)

    holder = asyncio.create_task(hold())
    await entered.wait()
    waiter = start(coord.acquire("closing"))
    await until_waiting(observer, "closing", 1)
    await coord.aclose()
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(holder, 5)
    with pytest.raises(BackendError):
        await asyncio.wait_for(waiter, 5)
    info = await observer.inspect("closing")
    assert info.holders == () and info.waiting == 0


async def test_a_client_of_your_own_is_used_and_left_open(redis_url: str, namespace: str) -> None:
    """connect(redis=client): locks work, and aclose() leaves the client usable."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        coord = agentlocks.connect(redis=client, namespace=namespace)
        async with coord.acquire("mine") as lease:
            waiter = start(coord.acquire("mine"))
            await until_waiting(coord, "mine", 1)
            assert lease.token > 0
        await (await asyncio.wait_for(waiter, 10)).release()
        backend = coord.backend
        assert isinstance(backend, RedisBackend)
        await coord.aclose()
        assert await client.ping()
        assert backend.client_name + ":inbox" not in await client_names(client, "agentlocks")
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://", {"connect_timeout": 0}),
        ("redis://", {"socket_timeout": "soon"}),
        ("redis://?max_connections=0", {}),
        ("redis://", {"max_connections": 2.5}),
        ("redis://", {"ssl_ca_certs": "/ca.pem"}),
        ("redis://", {"redis": object()}),
    ],
)
def test_bad_options_fail_before_any_io(url: str, options: dict[str, object]) -> None:
    """Bad timeouts, pool sizes, TLS options on redis:// or a non-client raise ConfigError."""
    with pytest.raises(ConfigError):
        agentlocks.connect(url, **options)


async def test_cancellation_storm_of_two_hundred_waiters(connect: Connect, namespace: str) -> None:
    """200 waiters, random cancels and timeouts: survivors served once each, in order."""
    coord = connect()
    rng = random.Random(11)
    holder = await coord.acquire("storm")
    fates = [rng.choice("cts") for _ in range(200)]  # cancel / timeout / survive
    tasks = [
        start(coord.acquire("storm", timeout=rng.uniform(0.01, 0.3) if fate == "t" else None))
        for fate in fates
    ]
    await asyncio.sleep(0.05)
    for task, fate in zip(tasks, fates, strict=True):
        if fate == "c":
            task.cancel()
            await asyncio.sleep(rng.choice((0, 0, 0.001)))
    await asyncio.sleep(0.35)
    await holder.release()
    tokens = []
    for task, fate in zip(tasks, fates, strict=True):
        (outcome,) = await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
        if isinstance(outcome, Lease):
            if fate == "s":
                tokens.append(outcome.token)
            await outcome.release()
        else:
            assert fate != "s", outcome
    assert len(tokens) == fates.count("s")
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    info = await coord.inspect("storm")
    assert info.holders == () and info.waiting == 0
