"""Faults a production deployment meets (issue 10) on a real Redis server.

Stalled holders, silent partitions, repeated cancels on a one-connection pool, dead
waiter processes, fenced registry generations, background failures and closing with
requests waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from agentlocks import AcquireTimeout, AgentLocksError, BackendError, Coordinator, Lease, LeaseLost
from agentlocks.backends.redis import RedisBackend
from agentlocks.backends.redis._scripts import generation_key, lock_keys
from tests.support.proxy import PartitionProxy
from tests.support.waiting import until_waiting as waiting

from .conftest import Connect, start
from .test_processes import read_line, spawn, stop


def port_of(url: str) -> int:
    """The TCP port of a ``redis://host:port/db`` URL."""
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def redis_of(coord: Coordinator) -> RedisBackend:
    """The coordinator's Redis backend."""
    backend = coord.backend
    assert isinstance(backend, RedisBackend)
    return backend


@contextlib.contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Collect what the event loop would report as unhandled (task exceptions never retrieved)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        yield seen
        gc.collect()  # a lost task exception is reported when the task is collected
    finally:
        loop.set_exception_handler(previous)


# -- 1. a stalled holder -----------------------------------------------------------------------


@pytest.mark.parametrize("style", ["async with", "await"])
async def test_a_stalled_holder_whose_key_moved_on_reports_lease_lost(
    redis_url: str, namespace: str, connect: Connect, style: str
) -> None:
    """Loop blocked 4 s past lease_ttl=1 while another process is granted: LeaseLost, lost."""
    coord = connect(lease_ttl=1)
    workers: list[Any] = []

    async def stall_while_taken() -> None:
        other = spawn("wait", redis_url, namespace, "stall", 1)
        workers.append(other)
        await waiting(coord, "stall", 1)
        time.sleep(4)  # noqa: ASYNC251 (the point: the holder's own event loop stalls)
        # Meanwhile the other process's keep-alive found the lease expired and took the key.
        assert await asyncio.wait_for(read_line(other), 10) == "GRANTED"

    try:
        if style == "await":
            lease = await coord.acquire("stall")
            await stall_while_taken()
            with pytest.raises(LeaseLost):
                await lease.release()
        else:
            with pytest.raises(LeaseLost):
                async with coord.acquire("stall") as lease:
                    await stall_while_taken()
        assert lease.lost
    finally:
        for worker in workers:
            stop(worker)


async def test_a_release_that_finds_the_grant_gone_raises_lease_lost(
    connect: Connect, namespace: str, raw: aioredis.Redis
) -> None:
    """release.lua's "not held" answer is a loss, never a success."""
    coord = connect()
    lease = await coord.acquire("gone")
    await raw.delete(lock_keys(namespace, "l:gone")[0].decode())  # expired / taken over
    with pytest.raises(LeaseLost):
        await lease.release()
    assert lease.lost


# -- 2. a silent partition ---------------------------------------------------------------------


async def test_a_partitioned_holder_is_lost_before_the_key_moves_on_and_ends_promptly(
    redis_url: str, connect: Connect
) -> None:
    """Silent partition, lease_ttl=3: body cancelled before another client is granted; no wait."""
    with PartitionProxy(port_of(redis_url)) as proxy:
        holder = connect(proxy.url_for(redis_url), lease_ttl=3)
        other = connect(lease_ttl=3)
        times: dict[str, float] = {}

        async def take() -> Lease:
            lease = await other.acquire("cut", timeout=15)
            times["granted"] = time.monotonic()
            return lease

        with pytest.raises(LeaseLost):
            async with holder.acquire("cut") as lease:
                await asyncio.sleep(0.5)  # a renewal or two went through
                proxy.partition()
                times["partitioned"] = time.monotonic()
                taker = asyncio.create_task(take())
                try:
                    await asyncio.sleep(30)
                finally:
                    times["cancelled"] = time.monotonic()
        times["ended"] = time.monotonic()
        assert lease.lost
        taken = await asyncio.wait_for(taker, 15)
        assert taken.token > lease.token
        await taken.release()
        # No two holders: the holder knew before the server could give the key away.
        assert times["cancelled"] < times["granted"], times
        # Lost within the lease (3 s) of the partition, and the block ends at once after.
        assert times["cancelled"] - times["partitioned"] < 3.0, times
        assert times["ended"] - times["cancelled"] < 0.5, times
        proxy.heal()


async def test_a_partitioned_waiter_does_not_hang(redis_url: str, connect: Connect) -> None:
    """A waiter cut off silently fails (or times out by its own timeout) instead of hanging."""
    with PartitionProxy(port_of(redis_url)) as proxy:
        holder = connect()
        lease = await holder.acquire("cut-wait")
        url = proxy.url_for(redis_url)
        cut_off = connect(url, lease_ttl=1.5, socket_timeout=1)
        timed = start(cut_off.acquire("cut-wait", timeout=2))
        untimed = start(cut_off.acquire("cut-wait"))
        await waiting(holder, "cut-wait", 2)
        proxy.partition()
        started = time.monotonic()
        # Its own timeout, or the keep-alive's loss of contact, whichever comes first.
        with pytest.raises((AcquireTimeout, BackendError)):
            await asyncio.wait_for(timed, 10)
        assert time.monotonic() - started < 2 + 1.5 + 0.5  # plus a withdrawal bounded by its TTL
        with pytest.raises(BackendError):
            await asyncio.wait_for(untimed, 10)
        proxy.heal()
        await lease.release()


async def test_renewal_is_not_stuck_behind_a_busy_pool(redis_url: str, connect: Connect) -> None:
    """lease_ttl=1, one slow connection, 30 tasks queued for it: renewals still keep the lease."""
    with PartitionProxy(port_of(redis_url)) as proxy:
        proxy.delay = 0.02  # a 40 ms round trip: the queue for the connection is ~1.2 s long
        coord = connect(proxy.url_for(redis_url), max_connections=1, lease_ttl=1)
        busy = True

        async def load() -> None:
            while busy:
                await coord.inspect("elsewhere")

        async with coord.acquire("renewed") as lease:
            loaders = [asyncio.create_task(load()) for _ in range(30)]
            await asyncio.sleep(2.5)  # several lease lifetimes
            assert not lease.lost
            busy = False
            await asyncio.gather(*loaders)
        proxy.delay = 0.0


# -- 4. release and withdrawal under repeated cancels ------------------------------------------


async def test_release_survives_repeated_cancels_while_waiting_for_the_connection(
    connect: Connect, raw: aioredis.Redis
) -> None:
    """max_connections=1: a holder cancelled thrice while its release queues still frees the key."""
    coord = connect(max_connections=1, lease_ttl=20)
    other = connect()
    entered = asyncio.Event()

    async def hold() -> None:
        async with coord.acquire("one-conn"):
            entered.set()
            await asyncio.sleep(30)

    holder = asyncio.create_task(hold())
    await entered.wait()
    waiter = start(other.acquire("one-conn", timeout=15))
    await waiting(other, "one-conn", 1)
    await raw.execute_command("CLIENT", "PAUSE", 600, "ALL")
    paused = time.monotonic()
    blocker = asyncio.create_task(coord.inspect("elsewhere"))  # takes the only connection
    await asyncio.sleep(0.05)
    for _ in range(3):  # the first cancel starts the release; the others must not stop it
        holder.cancel()
        await asyncio.sleep(0.05)
    lease = await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - paused < 3.0  # handed on by the release, not by the 20 s lease
    with pytest.raises(asyncio.CancelledError):
        await holder
    await blocker
    await lease.release()


async def test_withdrawal_survives_repeated_cancels_while_waiting_for_the_connection(
    connect: Connect, raw: aioredis.Redis
) -> None:
    """max_connections=1: a waiter cancelled thrice while its withdrawal queues leaves the queue."""
    coord = connect(max_connections=1, lease_ttl=20)
    other = connect()
    lease = await other.acquire("one-conn-wait")
    waiter = start(coord.acquire("one-conn-wait"))
    await waiting(other, "one-conn-wait", 1)
    await raw.execute_command("CLIENT", "PAUSE", 600, "ALL")
    blocker = asyncio.create_task(coord.inspect("elsewhere"))
    await asyncio.sleep(0.05)
    for _ in range(3):
        waiter.cancel()
        await asyncio.sleep(0.05)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 5)
    await blocker
    assert (await other.inspect("one-conn-wait")).waiting == 0  # withdrawn, not left to expire
    await lease.release()
    assert (await other.inspect("one-conn-wait")).holders == ()  # nobody was granted it


async def test_release_cancelled_while_its_reply_is_awaited_ends_only_once_it_ran(
    connect: Connect, raw: aioredis.Redis
) -> None:
    """A holder cancelled thrice after its release was sent: CancelledError only once it ran."""
    coord, other = connect(lease_ttl=20), connect()
    entered = asyncio.Event()

    async def hold() -> None:
        async with coord.acquire("sent-release"):
            entered.set()
            await asyncio.sleep(30)

    holder = asyncio.create_task(hold())
    await entered.wait()
    waiter = start(other.acquire("sent-release", timeout=15))
    await waiting(other, "sent-release", 1)
    await raw.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # the release is sent, unanswered
    paused = time.monotonic()
    for _ in range(3):  # the first cancel starts the release; the others land on its reply
        holder.cancel()
        await asyncio.sleep(0.05)
    assert not holder.done()  # the cancellation waits for the release to run
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert time.monotonic() - paused >= 1.4  # (not before the server ran commands again)
    lease = await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - paused < 6.0  # handed on by the release, not by the 20 s lease
    await lease.release()


async def test_an_uncontended_release_starts_no_task(connect: Connect) -> None:
    """release() runs in the caller's task: no task (and no loop turns) per release."""
    coord = connect()
    lease = await coord.acquire("no-task")
    await asyncio.sleep(0.05)  # the renewal task has started and sleeps (its wait_for is a task)
    loop = asyncio.get_running_loop()
    created: list[object] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        await lease.release()
    finally:
        loop.set_task_factory(None)
    assert created == []
    assert lease.released and not lease.lost
    assert (await coord.inspect("no-task")).holders == ()


# -- 8. dead waiters ---------------------------------------------------------------------------


async def test_a_killed_waiter_process_is_skipped_at_hand_off(
    redis_url: str, namespace: str, connect: Connect
) -> None:
    """A SIGKILLed queued waiter: the next live waiter gets the key at release, not later."""
    coord, survivor_coord = connect(lease_ttl=20), connect(lease_ttl=20)
    lease = await coord.acquire("dead-waiter")
    dead = spawn("wait", redis_url, namespace, "dead-waiter", 20)
    try:
        await waiting(coord, "dead-waiter", 1)
        survivor = start(survivor_coord.acquire("dead-waiter", timeout=30))
        await waiting(coord, "dead-waiter", 2)
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        await asyncio.sleep(0.1)  # the server sees the dead process's connections close
        released = time.monotonic()
        await lease.release()
        after = await asyncio.wait_for(survivor, 5)
        assert time.monotonic() - released < 1.0
    finally:
        stop(dead)
    info = await coord.inspect("dead-waiter")
    assert info.waiting == 0 and [h.token for h in info.holders] == [after.token]
    await after.release()


async def test_a_stale_queue_entry_on_a_free_key_does_not_block_a_newcomer(
    connect: Connect, namespace: str, raw: aioredis.Redis
) -> None:
    """A queued request nobody listens for, on a free key: a new request is granted at once."""
    coord = connect()
    _, q_key, d_key, _ = (k.decode() for k in lock_keys(namespace, "l:stale"))
    stale = "0123456789abcdef:1|x|0|20000"  # a coordinator that no longer exists
    now_ms = int((await raw.time())[0]) * 1000
    await raw.zadd(q_key, {stale: 1})
    await raw.zadd(d_key, {stale: now_ms + 20_000})
    lease = await asyncio.wait_for(coord.acquire("stale"), 2)
    info = await coord.inspect("stale")
    assert info.waiting == 0 and [h.token for h in info.holders] == [lease.token]
    await lease.release()


async def test_a_live_waiter_skipped_while_its_inbox_was_down_queues_again(
    redis_url: str, connect: Connect
) -> None:
    """Inbox reset during the hand-off: the live waiter is skipped, then queues again, granted."""
    with PartitionProxy(port_of(redis_url)) as proxy:
        holder = connect()
        lease = await holder.acquire("inbox-down")
        url = proxy.url_for(redis_url)
        waiter_coord = connect(url, connect_timeout=0.5, socket_timeout=0.5)
        waiter = start(waiter_coord.acquire("inbox-down", timeout=20))
        await waiting(holder, "inbox-down", 1)
        proxy.cut()  # the inbox connection is reset: the server has no subscriber for it
        proxy.partition()  # ... and its reconnection hangs for now
        await asyncio.sleep(0.2)
        await lease.release()  # publishes to nobody: the waiter is skipped as dead
        assert (await holder.inspect("inbox-down")).waiting == 0
        proxy.heal()
        after = await asyncio.wait_for(waiter, 15)  # re-subscribed, re-checked, queued again
        assert after.token > lease.token
        await after.release()


# -- 10. registry generations ------------------------------------------------------------------


async def test_a_registry_generation_never_expires(
    connect: Connect, namespace: str, raw: aioredis.Redis
) -> None:
    """The generation record has no TTL, so an idle registry never reads as 0 again."""
    tools = connect().registry("gen-ttl")
    for expected in (1, 2):
        async with tools.write() as version:
            assert version == expected
    key = generation_key(namespace, "gen-ttl").decode()
    assert await raw.pttl(key) == -1
    assert await tools.version() == 2
    await raw.delete(key)


async def test_a_writer_whose_lease_ran_out_publishes_nothing(
    connect: Connect, namespace: str, raw: aioredis.Redis
) -> None:
    """The publish is fenced on the writer's grant in one script: a lost lease writes nothing."""
    coord = connect()
    tools = coord.registry("fenced")
    async with tools.write():
        pass
    h_key = lock_keys(namespace, "l:fenced")[0].decode()
    with pytest.raises(LeaseLost):
        async with tools.write() as version:
            assert version == 2
            # The lease runs out on the server (as after a stall) while the block runs.
            (member,) = await raw.zrange(h_key, 0, -1)
            await raw.zadd(h_key, {member: 1}, xx=True)
    assert await tools.version() == 1
    await raw.delete(generation_key(namespace, "fenced").decode())


# -- 11. background tasks -----------------------------------------------------------------------


async def test_a_failing_keep_alive_is_logged_and_fails_its_waiters(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """A background failure is logged on `agentlocks` and its waiters fail; nothing goes unseen."""
    coord, other = connect(lease_ttl=0.6), connect()
    lease = await other.acquire("keeper")

    async def broken(_: object) -> list[Any]:
        raise RuntimeError("injected keep-alive failure")

    redis_of(coord)._room._refresh = broken  # type: ignore[method-assign]
    with loop_errors() as unhandled, caplog.at_level(logging.ERROR, logger="agentlocks"):
        with pytest.raises(BackendError, match="keep-alive"):
            await asyncio.wait_for(coord.acquire("keeper"), 10)
        await asyncio.sleep(0.05)
        logged = [r for r in caplog.records if r.name == "agentlocks" and "keep-alive" in r.message]
        assert logged and "injected keep-alive failure" in logged[0].getMessage()
    assert unhandled == []
    assert (await other.inspect("keeper")).waiting == 0
    await lease.release()


async def test_aclose_ends_every_background_task(connect: Connect) -> None:
    """After aclose() no agentlocks task of the coordinator is left running."""
    coord, other = connect(lease_ttl=1), connect()
    lease = await other.acquire("tasks")
    held = await coord.acquire("held-too")
    waiter = start(coord.acquire("tasks"))
    await waiting(other, "tasks", 1)
    names = {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("agentlocks")}
    assert any("inbox" in n for n in names) and any("keep-alive" in n for n in names), names
    with loop_errors() as unhandled:
        await coord.aclose()
        with pytest.raises(AgentLocksError):
            await asyncio.wait_for(waiter, 5)
        assert len(coord._tasks) == 0
    assert unhandled == []
    assert held.lost
    await lease.release()


async def test_aclose_fails_its_waiters_at_once_and_spares_other_coordinators(
    connect: Connect,
) -> None:
    """aclose(): this coordinator's waiters fail at once; another coordinator's waiter is served."""
    holder, closing, bystander = connect(), connect(), connect()
    lease = await holder.acquire("closing")
    doomed = start(closing.acquire("closing"))
    await waiting(holder, "closing", 1)
    spared = start(bystander.acquire("closing", timeout=15))
    await waiting(holder, "closing", 2)
    started = time.monotonic()
    await closing.aclose()
    with pytest.raises(AgentLocksError):
        await asyncio.wait_for(doomed, 5)
    assert time.monotonic() - started < 1.0
    await asyncio.sleep(0.1)
    assert not spared.done()
    assert (await holder.inspect("closing")).waiting == 1
    await lease.release()
    after = await asyncio.wait_for(spared, 5)
    await after.release()
