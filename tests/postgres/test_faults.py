"""PostgreSQL under faults: silent partitions, roles, borrowed pools, closing, background work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio

import agentlocks
from agentlocks import (
    AcquireTimeout,
    AgentLocksError,
    BackendError,
    Busy,
    Coordinator,
    Lease,
    LeaseLost,
)
from agentlocks.backends.postgres import PostgresBackend, _session
from tests.support.proxy import PartitionProxy

from .conftest import Connect, no_advisory_locks_soon


def _backend(coord: Coordinator) -> PostgresBackend:
    backend = coord._backend  # white-box: connection counts, background releases
    assert isinstance(backend, PostgresBackend)
    return backend


async def _lost_at(lease: Lease) -> float:
    """The monotonic time ``lease.lost`` turned True (polled every 5 ms)."""
    while not lease.lost:
        await asyncio.sleep(0.005)
    return time.monotonic()


def _proxy_for(pg_url: str) -> PartitionProxy:
    """A partition proxy in front of the test server."""
    port = urlsplit(pg_url).port
    assert port is not None
    return PartitionProxy(port)


def _connect_short(url: str) -> agentlocks.Coordinator:
    """A coordinator with a 1 s lease and a 2 s liveness interval, in a fresh namespace."""
    return agentlocks.connect(
        url, namespace=f"pgtest-{uuid.uuid4().hex[:12]}", lease_ttl=1, liveness_interval=2
    )


# -- 3. a silently cut-off holder loses its lock on the server within about lease_ttl ----------


@pytest.mark.parametrize(
    ("ttl", "queued"), [(1.0, False), (2.0, False), (1.0, True)], ids=["1s", "2s", "1s-queued"]
)
async def test_silent_partition_frees_the_lock_on_the_server_within_lease_ttl(
    connect: Connect, pg_url: str, ttl: float, queued: bool
) -> None:
    """Holder partitioned through a proxy: lost locally first, then the next client is granted."""
    # A fast-path holder, and one granted after waiting, on a connection of its own.
    other = connect(lease_ttl=ttl)
    with _proxy_for(pg_url) as proxy:
        holder = agentlocks.connect(proxy.url_for(pg_url), namespace=other.namespace, lease_ttl=ttl)
        try:
            if queued:
                blocker = await other.acquire("job")
                waiting = asyncio.create_task(holder.acquire("job").__aenter__())
                await asyncio.sleep(0.3)
                await blocker.release()
                lease = await asyncio.wait_for(waiting, 5)
            else:
                lease = await holder.acquire("job")
            await asyncio.sleep(ttl / 2)  # a renewal or two went through
            proxy.partition()
            cut = time.monotonic()
            lost = asyncio.create_task(_lost_at(lease))
            successor = await other.acquire("job", timeout=ttl + 3)
            granted = time.monotonic()
            assert lease.lost and lost.done()
            assert lost.result() <= granted  # loud before anyone else could hold it
            assert granted - cut <= ttl + 1.5  # the server freed it within about lease_ttl
            assert successor.token > lease.token
            await successor.release()
            with pytest.raises(LeaseLost):
                await lease.release()
        finally:
            proxy.cut()
            await holder.aclose()


async def _queued(coord: Coordinator, key: str, semaphore: bool) -> None:
    """Wait until ``coord`` sees one request waiting on ``key`` (the cut-off one)."""
    while (await coord.inspect(key, semaphore=semaphore)).waiting < 1:
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", ["exclusive", "shared", "semaphore"])
async def test_silently_cut_off_waiter_frees_the_queue_on_the_server_within_lease_ttl(
    connect: Connect, pg_url: str, kind: str
) -> None:
    """A waiter partitioned while queued (or a semaphore head holding the gate) frees it in ~TTL."""
    ttl = 1.0
    semaphore = kind == "semaphore"
    other, third = connect(lease_ttl=ttl), connect(lease_ttl=ttl)

    def request(coord: Coordinator, shared: bool = False, timeout: float | None = None) -> Lease:
        if semaphore:
            return coord.semaphore("job", 1, timeout=timeout)
        return coord.acquire("job", shared=shared, timeout=timeout)

    with _proxy_for(pg_url) as proxy:
        cut_off = agentlocks.connect(
            proxy.url_for(pg_url), namespace=other.namespace, lease_ttl=ttl
        )
        waiting = None
        try:
            blocker = await request(other)
            waiting = asyncio.create_task(request(cut_off, kind == "shared").__aenter__())
            await asyncio.wait_for(_queued(other, "job", semaphore), 5)
            await asyncio.sleep(ttl / 2)  # a keep-alive or two went through
            proxy.partition()
            await blocker.release()
            released = time.monotonic()
            # An exclusive request: it cannot share with a shared waiter granted meanwhile.
            successor = await request(third, timeout=ttl + 5)
            granted = time.monotonic()
            assert granted - released <= ttl + 1.5  # the server ended the cut-off session
            await successor.release()
        finally:
            proxy.cut()
            if waiting is not None:
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
            await cut_off.aclose()


async def test_healthy_holders_keep_their_locks_across_several_server_leases(
    connect: Connect,
) -> None:
    """lease_ttl=1: a fast-path holder and a holder that waited keep their locks for 3.5 s."""
    coord, other = connect(lease_ttl=1), connect(lease_ttl=1)
    fast = await coord.acquire("fast")
    first = await other.acquire("queued")
    waiting = asyncio.create_task(coord.acquire("queued").__aenter__())
    await asyncio.sleep(0.3)
    await first.release()
    queued = await asyncio.wait_for(waiting, 5)  # granted on a spare of its own
    await asyncio.sleep(3.5)
    assert not fast.lost and not queued.lost
    for key in ("fast", "queued"):
        with pytest.raises(Busy):
            await other.acquire(key, wait=False)
    await fast.release()
    await queued.release()


@pytest.mark.parametrize("semaphore", [False, True], ids=["lock", "semaphore"])
async def test_waiter_cut_off_silently_still_times_out_on_time(
    connect: Connect, pg_url: str, semaphore: bool
) -> None:
    """A wait through a silent partition ends with AcquireTimeout within seconds, not never."""
    other = connect(lease_ttl=1)
    with _proxy_for(pg_url) as proxy:
        # Bounds in play: the timeout, then liveness_interval for the scrub of the cancelled
        # wait (and the semaphore's UNLISTEN), then connect_timeout for a shared session the
        # head may be opening when the timeout strikes.
        cut_off = agentlocks.connect(
            proxy.url_for(pg_url), namespace=other.namespace, lease_ttl=1,
            liveness_interval=2, connect_timeout=1,
        )  # fmt: skip
        try:
            blocker = await (other.semaphore("job", 1) if semaphore else other.acquire("job"))
            lease = (
                cut_off.semaphore("job", 1, timeout=1)
                if semaphore
                else cut_off.acquire("job", timeout=1)
            )
            started = time.monotonic()
            waiting = asyncio.create_task(lease.__aenter__())
            await asyncio.wait_for(_queued(other, "job", semaphore), 5)
            proxy.partition()
            done, _ = await asyncio.wait([waiting], timeout=10)
            assert done, "the timed-out wait hangs on the silent connection"
            with pytest.raises(AcquireTimeout):
                waiting.result()
            assert time.monotonic() - started <= 1 + 2 + 1 + 2.5
            await blocker.release()
        finally:
            proxy.cut()
            await cut_off.aclose()


async def test_fast_path_through_a_silent_partition_fails_on_time(pg_url: str) -> None:
    """A fast-path acquire on a shared session cut off silently ends near its timeout."""
    with _proxy_for(pg_url) as proxy:
        coord = _connect_short(proxy.url_for(pg_url))
        try:
            await (await coord.acquire("warm")).release()  # the shared session is open
            proxy.partition()
            started = time.monotonic()
            attempt = asyncio.create_task(coord.acquire("job", timeout=1).__aenter__())
            done, _ = await asyncio.wait([attempt], timeout=10)
            assert done, "the fast path hangs on the silent connection"
            assert isinstance(attempt.exception(), AcquireTimeout | BackendError)
            # The timeout, then at most a ping's due time (a third of the lease) and its
            # deadline (liveness_interval): the session is dropped under the statement.
            assert time.monotonic() - started <= 1 + 1 / 3 + 2 + 1.5
        finally:
            proxy.cut()
            await coord.aclose()


def _liveness_questions() -> list[asyncio.Task[Any]]:
    """Tasks asking the server what it does for a silent session (``Liveness``)."""
    names = {"Sessions.server_state", "Liveness._ask"}
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ in names]


async def test_a_late_liveness_question_ends_with_the_coordinator(pg_url: str) -> None:
    """A server-state question left unanswered by a partition is cancelled by aclose()."""
    with _proxy_for(pg_url) as proxy:
        coord = _connect_short(proxy.url_for(pg_url))
        try:
            await coord.acquire("held")  # pinged: its session's silence is noticed
            proxy.partition()
            deadline = time.monotonic() + 10
            while not _liveness_questions():
                assert time.monotonic() < deadline, "no liveness question was asked"
                await asyncio.sleep(0.05)
        finally:
            await asyncio.wait_for(coord.aclose(), 15)
            proxy.cut()
        assert all(t.done() for t in _liveness_questions()), "a question outlived aclose()"


@contextlib.asynccontextmanager
async def _swap_stuck_on_a_row_lock(
    backend: PostgresBackend, admin: asyncpg.Connection, namespace: str
) -> AsyncIterator[asyncio.Task[Any]]:
    """A head swap on a shared session, waiting in the server until the block ends.

    ``admin`` holds the head row ``FOR UPDATE`` in a transaction; the swap (the task
    yielded) waits for that row lock and goes on once the transaction ends on exit.
    """
    await backend.swap_head("thread", "head", None, "h1", None, 60)  # the row exists
    async with admin.transaction():
        await admin.execute(
            f"SELECT 1 FROM {backend._sql.heads} WHERE namespace = $1 AND resource = 'thread'"
            " FOR UPDATE",
            namespace,
        )
        yield asyncio.create_task(backend.swap_head("thread", "head", "h1", "h2", None, 60))


async def test_a_statement_waiting_in_the_server_keeps_its_session_and_leases(
    connect: Connect, admin: asyncpg.Connection, namespace: str
) -> None:
    """A head swap stuck behind a row lock for 3 liveness intervals loses nothing."""
    # The swap runs on the shared session that holds the lease, so the pings (the
    # renewal's and the lease's) queue behind it and miss their deadlines; the server says
    # it is still working on the statement: a healthy session, kept with its lease.
    coord = connect(liveness_interval=0.5, lease_ttl=1)
    lease = await coord.acquire("job")
    async with _swap_stuck_on_a_row_lock(_backend(coord), admin, namespace) as swap:
        await asyncio.sleep(1.5)  # three intervals, a lease and a half
        assert not swap.done() and not lease.lost
    assert (await asyncio.wait_for(swap, 5)).outcome == "swapped"
    await lease.verify()
    assert not lease.lost
    await lease.release()


async def test_a_release_queued_behind_a_slow_statement_is_still_a_holder(
    connect: Connect, admin: asyncpg.Connection, namespace: str
) -> None:
    """Until its unlock reaches the server, a released lock is reported held, then free."""
    # The unlock queues on the holder's shared session behind a head swap stuck on a row
    # lock, while another shared session is free: inspect() must not say "free" (and a
    # try then fail) before the server has let go.
    coord = connect(liveness_interval=5)
    lease = await coord.acquire("job")
    async with _swap_stuck_on_a_row_lock(_backend(coord), admin, namespace) as swap:
        await asyncio.sleep(0.1)
        release = asyncio.create_task(lease.release())
        await asyncio.sleep(0.1)
        assert (await coord.inspect("job")).held  # on another shared session
        with pytest.raises(Busy):
            await coord.acquire("job", wait=False)
        assert not release.done()
    await asyncio.wait_for(asyncio.gather(swap, release), 5)
    assert not (await coord.inspect("job")).held
    await (await coord.acquire("job", wait=False)).release()


async def test_healthy_semaphore_head_keeps_its_place_across_several_server_leases(
    connect: Connect,
) -> None:
    """lease_ttl=1: a head holding the gate for 3.5 s keeps it and is granted before a later one."""
    holder, head, later = connect(lease_ttl=1), connect(lease_ttl=1), connect(lease_ttl=1)
    slot = await holder.semaphore("pool", 1)
    first = asyncio.create_task(head.semaphore("pool", 1).__aenter__())
    await asyncio.wait_for(_queued(holder, "pool", True), 5)
    second = asyncio.create_task(later.semaphore("pool", 1).__aenter__())
    await asyncio.sleep(3.5)
    assert not first.done() and not second.done()
    await slot.release()
    granted = await asyncio.wait_for(first, 5)  # the head kept its place: no BackendError
    assert not second.done()
    await granted.release()
    await (await asyncio.wait_for(second, 5)).release()


# -- 5. fencing tokens grow across roles with different search_path ---------------------------


@pytest_asyncio.fixture
async def two_roles(admin: asyncpg.Connection, pg_url: str) -> AsyncIterator[tuple[str, str]]:
    """Two login roles, each with a schema of its own as its whole search_path."""
    suffix = uuid.uuid4().hex[:8]
    roles = [f"agl_a_{suffix}", f"agl_b_{suffix}"]
    # What a DBA does once (docs/backends.md, "Schema and privileges"): create the
    # objects in the fixed schema and grant them. Idempotent, as agentlocks' own bootstrap.
    await admin.execute(
        "CREATE SEQUENCE IF NOT EXISTS public.agentlocks_tokens AS bigint CACHE 1 NO CYCLE"
    )
    for role in roles:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"CREATE SCHEMA {role} AUTHORIZATION {role}")
        await admin.execute(f"ALTER ROLE {role} SET search_path = {role}")
        await admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        await admin.execute(f"GRANT USAGE, UPDATE ON SEQUENCE public.agentlocks_tokens TO {role}")
    parts = urlsplit(pg_url)
    host = f"{parts.hostname}:{parts.port}"
    urls = [parts._replace(netloc=f"{role}@{host}").geturl() for role in roles]
    yield urls[0], urls[1]
    for role in roles:
        await admin.execute(f"DROP OWNED BY {role} CASCADE")
        await admin.execute(f"DROP ROLE {role}")


async def test_tokens_grow_across_roles_with_different_search_paths(
    two_roles: tuple[str, str],
) -> None:
    """Two roles, each with its own search_path, alternate on one key: tokens always grow."""
    namespace = f"pgtest-{uuid.uuid4().hex[:12]}"
    coords = [agentlocks.connect(url, namespace=namespace) for url in two_roles]
    try:
        tokens = []
        for i in range(6):
            async with coords[i % 2].acquire("k") as lease:
                tokens.append(lease.token)
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens
    finally:
        for coord in coords:
            await coord.aclose()


# -- 6. FIFO with shared requests, spaced arrivals across two coordinators --------------------


async def test_spaced_arrivals_with_shared_requests_keep_what_backends_md_promises(
    connect: Connect,
) -> None:
    """X1 S2 S3 X4 S5 S6, 60 ms apart: nothing overtakes an exclusive; exclusives keep order."""
    # Over two coordinators; shared requests may reorder among themselves (the documented
    # caveat of docs/backends.md).
    holder, one, two = connect(), connect(), connect()
    # Warm: each coordinator has a shared session and two idle spares, so no request is
    # still "on its way to the server" (opening a connection) when the next one arrives.
    warm = [await holder.acquire(f"warm{i}") for i in range(2)]
    waits = [
        asyncio.create_task(c.acquire(f"warm{i}", shared=True).__aenter__())
        for c in (one, two)
        for i in (0, 1)
    ]
    await asyncio.sleep(0.3)
    for lease in warm:
        await lease.release()
    for lease in await asyncio.gather(*waits):
        await lease.release()
    first = await holder.acquire("k")
    order: list[str] = []

    async def take(coord: Coordinator, name: str) -> None:
        async with coord.acquire("k", shared=name[0] == "S", timeout=20):
            order.append(name)
            await asyncio.sleep(0.05)

    tasks = []
    for i, name in enumerate(["X1", "S2", "S3", "X4", "S5", "S6"]):
        tasks.append(asyncio.create_task(take(one if i % 2 == 0 else two, name)))
        await asyncio.sleep(0.06)
    await first.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    position = {name: i for i, name in enumerate(order)}
    assert position["X1"] == 0, order
    assert position["S2"] < position["X4"], order  # exclusive in order behind the shared one
    assert position["X4"] < min(position["S5"], position["S6"]), order  # nobody overtakes X4


# -- 7. a borrowed pool stays the application's ------------------------------------------------


@pytest_asyncio.fixture
async def small_pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The application's own asyncpg pool, max_size=4."""
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def test_borrowed_pool_serves_20_locks_and_the_application_at_once(
    small_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_size=4: 20 locks granted, the app's own queries still run, connections go back."""
    monkeypatch.setattr(_session, "IDLE_LINGER", 0.2)
    coord = agentlocks.connect(postgres=small_pool, namespace=f"pgtest-{uuid.uuid4().hex[:12]}")
    try:
        leases = await asyncio.wait_for(
            asyncio.gather(*(coord.acquire(f"k{i}", timeout=10) for i in range(20))), 10
        )
        assert _backend(coord).connection_count() <= 2  # half the pool at most
        for _ in range(3):  # the application's queries do not starve while locks are held
            assert await asyncio.wait_for(small_pool.fetchval("SELECT 1"), 2) == 1
        for lease in leases:
            await lease.release()
        async with asyncio.timeout(5):
            while _backend(coord).connection_count():
                await asyncio.sleep(0.05)
    finally:
        await coord.aclose()


async def test_exhausted_borrowed_pool_makes_a_request_wait_not_fail(
    small_pool: asyncpg.Pool,
) -> None:
    """An exhausted borrowed pool makes acquire wait (bounded by its timeout), never fail."""
    # The app holds all 4 connections past connect_timeout; the acquire is granted once the
    # app gives one back.
    coord = agentlocks.connect(
        postgres=small_pool, namespace=f"pgtest-{uuid.uuid4().hex[:12]}", connect_timeout=0.3
    )
    taken = [await small_pool.acquire() for _ in range(4)]
    try:
        with pytest.raises(AcquireTimeout):
            await coord.acquire("k", timeout=0.2)
        waiting = asyncio.create_task(coord.acquire("k", timeout=10).__aenter__())
        await asyncio.sleep(0.8)
        await small_pool.release(taken.pop())
        lease = await asyncio.wait_for(waiting, 5)
        await lease.release()
    finally:
        for conn in taken:
            await small_pool.release(conn)
        await coord.aclose()


# -- 9. aclose() with requests waiting ---------------------------------------------------------


async def test_aclose_fails_waiting_requests_at_once_and_marks_held_leases_lost(
    connect: Connect, admin: asyncpg.Connection, app_name: str
) -> None:
    """aclose(): waiters (in the server and queued locally) fail with AgentLocksError at once."""
    holder, coord = connect(application_name="agentlocks-holder"), connect()
    blocker = await holder.acquire("k")
    held = await coord.acquire("mine")
    waiters = [asyncio.create_task(coord.acquire("k").__aenter__()) for _ in range(3)]
    waiters.append(asyncio.create_task(coord.acquire("k", shared=True).__aenter__()))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await coord.aclose()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 2)
    assert time.monotonic() - started < 1.5
    for result in results:
        assert isinstance(result, AgentLocksError) and not isinstance(result, LeaseLost), result
    assert held.lost
    await no_advisory_locks_soon(admin, app_name)
    await blocker.release()


# -- 11. background work: supervised, logged, cancellable -------------------------------------


async def test_failed_background_release_is_logged_with_key_and_token(
    connect: Connect, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background release that fails is logged on 'agentlocks' with its key and token."""
    coord = connect()
    backend = _backend(coord)
    lease = await coord.acquire("bg")
    grant = lease._grant
    assert grant is not None
    unhandled: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))

    async def broken(_grant: object) -> bool:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(backend._grants, "release", broken)
    with caplog.at_level(logging.ERROR, logger="agentlocks"):
        backend._grants.release_later([grant])
        for _ in range(20):
            await asyncio.sleep(0.01)
    monkeypatch.undo()
    records = [r for r in caplog.records if r.name == "agentlocks" and "injected" in r.getMessage()]
    assert records, caplog.text
    assert "key='bg'" in records[0].getMessage()
    assert f"token={grant.token}" in records[0].getMessage()
    assert not unhandled
    await lease.release()


async def test_inspect_is_bounded_and_cancellable_while_a_grant_is_being_recorded(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inspect() waiting for a grant's task to record it: cut short by cancellation, bounded."""
    from agentlocks.backends.postgres import _backend, _queue

    coord = connect()
    never = _queue.Request(False, None, 30.0)  # a request whose task never settles
    monkeypatch.setattr(_backend, "granted_unrecorded", lambda rows, state: [never])
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(coord.inspect("k"), 0.2)
    assert time.monotonic() - started < 0.5  # cancellation is not ignored
    started = time.monotonic()
    await coord.inspect("k")
    assert time.monotonic() - started < 2  # and the wait is bounded


# -- 10. registry generations: fenced by the writer's grant, never backwards ------------------


async def test_generation_publish_is_fenced_by_the_writers_grant(
    connect: Connect, admin: asyncpg.Connection
) -> None:
    """publish_generation with a grant writes only while that grant is held; never lowers."""
    coord, other = connect(), connect()
    backend = _backend(coord)
    lease = await coord.acquire("tools")
    grant = lease._grant
    assert grant is not None
    assert await backend.publish_generation("tools", 5, grant) is True
    assert await backend.publish_generation("tools", 3, grant) is True
    assert await backend.read_generation("tools") == 5  # never backwards
    await lease.release()
    assert await backend.publish_generation("tools", 9, grant) is False  # released: refused
    # A grant the server took away (its session ended) while the client still has it.
    waiter = asyncio.create_task(other.acquire("tools").__aenter__())
    held = await coord.acquire("tools")
    held_grant = held._grant
    assert held_grant is not None
    pid = backend.backend_pid(held_grant)
    assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    successor = await asyncio.wait_for(waiter, 10)
    assert await backend.publish_generation("tools", 11, held_grant) is False
    # The successor, granted after waiting (on a spare of its own), publishes.
    assert successor._grant is not None
    assert await _backend(other).publish_generation("tools", 7, successor._grant) is True
    assert await backend.read_generation("tools") == 7
    await successor.release()
    with pytest.raises(LeaseLost):
        await held.release()


# -- 7 (guarantee 7) on the fast path: no shield, yet safe under repeated cancels -------------


async def test_release_cancelled_five_times_still_frees_the_key(connect: Connect) -> None:
    """A fast-path release cancelled repeatedly still unlocks on the server before it ends."""
    coord, other = connect(), connect()
    for _ in range(20):
        lease = await coord.acquire("k")
        releasing = asyncio.create_task(lease.release())
        await asyncio.sleep(0)  # the unlock is queued
        for _ in range(5):
            releasing.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await releasing
        async with other.acquire("k", wait=False):  # free on the server, at once
            pass


async def test_fast_acquire_cancelled_five_times_leaves_nothing_held(connect: Connect) -> None:
    """A fast-path acquire cancelled repeatedly mid-statement gives its grant back."""
    coord, other = connect(), connect()
    async with coord.acquire("warm-up"):  # a shared session is open: the try is sent at once
        pass
    for _ in range(20):
        acquiring = asyncio.create_task(coord.acquire("k").__aenter__())
        await asyncio.sleep(0)  # the try is queued
        for _ in range(5):
            acquiring.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await acquiring
        async with other.acquire("k", wait=False):
            pass
