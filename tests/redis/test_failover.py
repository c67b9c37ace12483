"""Failovers and resharding on real deployments: each test starts (and breaks) its own."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

import redis
from agentlocks import AcquireTimeout, BackendError, Lease, LeaseLost
from tests.support.deployments import ClusterDeployment, DeploymentError, SentinelDeployment
from tests.support.servers import unavailable
from tests.support.waiting import until_waiting

from .conftest import Connect

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sentinel_group(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SentinelDeployment]:
    """A primary, ``replicas`` replicas (indirect param, default 1) and 3 sentinels."""
    replicas = getattr(request, "param", 1)
    try:
        group = SentinelDeployment(tmp_path, replicas=replicas).start()
    except DeploymentError as exc:
        unavailable(f"redis+sentinel: {exc}")
    yield group
    group.stop()


@pytest.fixture
def cluster6(tmp_path: Path) -> Iterator[ClusterDeployment]:
    """A 3-master cluster with one replica per master (failover possible)."""
    try:
        cluster = ClusterDeployment(tmp_path, replicas=1).start()
    except DeploymentError as exc:
        unavailable(f"redis+cluster: {exc}")
    yield cluster
    cluster.stop()


async def eventually_acquire(coord: object, key: str, within: float) -> tuple[Lease, float]:
    """Acquire ``key``, retrying through BackendError; return the lease and the time taken."""
    began = time.monotonic()
    while True:
        try:
            lease = await coord.acquire(key, timeout=2)  # type: ignore[attr-defined]
            return lease, time.monotonic() - began
        except (BackendError, AcquireTimeout):
            if time.monotonic() - began > within:
                raise
            await asyncio.sleep(0.05)


def take_and_release(coord: object, key: str, timeout: float) -> asyncio.Task[Lease]:
    """A task that waits for ``key``, releases it at once, and returns the (ended) lease."""

    async def run() -> Lease:
        lease: Lease = await coord.acquire(key, timeout=timeout)  # type: ignore[attr-defined]
        with contextlib.suppress(LeaseLost, BackendError):
            await lease.release()
        return lease

    return asyncio.create_task(run())


async def settle(waiters: list[asyncio.Task[Lease]], within: float) -> list[object]:
    """Every waiter's outcome (a lease or an error) within ``within`` s: none may hang."""
    done = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), within)
    return list(done)


async def test_sentinel_failover_is_followed_and_no_waiter_hangs(
    sentinel_group: SentinelDeployment, connect: Connect
) -> None:
    """Primary killed: the coordinator reaches the new one within seconds; waiters end."""
    coord = connect(sentinel_group.url, lease_ttl=3, socket_timeout=1)
    other = connect(sentinel_group.url, lease_ttl=3, socket_timeout=1)
    lease = await coord.acquire("fo")
    waiters = [take_and_release(other, "fo", timeout=20) for _ in range(3)]
    await until_waiting(coord, "fo", 3)
    old = sentinel_group.primary_port()
    await asyncio.sleep(0.1)  # the replica has the queue (asynchronous replication)
    sentinel_group.node(old).kill()
    fresh, took = await eventually_acquire(coord, "after", within=15)
    assert sentinel_group.primary_port() != old
    assert took < 12, took  # down-after 1 s + election; seconds, not a restart
    await fresh.release()
    # The holder kept its grant (the replica had it) or sees it lost; never silently both.
    with contextlib.suppress(LeaseLost):
        await lease.release()
    outcomes = await settle(waiters, within=30)
    assert sum(isinstance(o, Lease) for o in outcomes) >= 2, outcomes  # the queue moved on
    tokens = []
    for outcome in outcomes:
        if isinstance(outcome, Lease):
            tokens.append(outcome.token)
        else:
            assert isinstance(outcome, (BackendError, AcquireTimeout)), outcome
    assert all(token > lease.token for token in tokens)  # tokens keep growing
    again, _ = await eventually_acquire(coord, "fo", within=10)
    assert again.token > max([lease.token, *tokens])
    await again.release()


def _spawn(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.redis._failover_worker", *map(str, args)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("sentinel_group", [2], indirect=True)
async def test_counter_exact_across_a_sentinel_failover_with_min_replicas(
    sentinel_group: SentinelDeployment, redis_url: str, namespace: str
) -> None:
    """4 processes x 25 tasks, primary killed mid-run, min_replicas=1: exact, no overlap."""
    counter_key = f"{namespace}:counter"
    url = sentinel_group.url + "?min_replicas=1&socket_timeout=1"
    workers = [_spawn("count", url, namespace, 25, redis_url, counter_key) for _ in range(4)]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert (await asyncio.to_thread(worker.stdout.readline)).strip() == "READY"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        await asyncio.sleep(0.3)  # mid-run
        sentinel_group.node(sentinel_group.primary_port()).kill()
        outputs = await asyncio.gather(
            *(asyncio.to_thread(w.communicate, timeout=55) for w in workers)
        )
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(10)
    assert [w.returncode for w in workers] == [0, 0, 0, 0]
    records = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    assert len(records) == 100, len(records)  # nobody gave up
    assert not [r for r in records if r["lost"]], "a grant was forgotten by the failover"
    raw = aioredis.Redis.from_url(redis_url)
    try:
        assert int(await raw.get(counter_key)) == 100  # no lost update
        await raw.delete(counter_key)
    finally:
        await raw.aclose()
    records.sort(key=lambda r: r["enter"])
    tokens = [r["token"] for r in records]
    assert tokens == sorted(tokens), "tokens did not grow across the failover"
    for before, after in itertools.pairwise(records):
        assert before["exit"] <= after["enter"], "two critical sections overlapped"


@pytest.mark.parametrize("min_replicas", [0, 1])
async def test_cluster_master_killed_replica_promoted(
    cluster6: ClusterDeployment, connect: Connect, min_replicas: int
) -> None:
    """A master dies, its replica takes over: holders keep (min_replicas=1) or lose loudly."""
    options = {"lease_ttl": 20, "socket_timeout": 1, "min_replicas": min_replicas}
    coord, other = connect(cluster6.url, **options), connect(cluster6.url, **options)
    # Right after start-up a replica may need a moment before it acknowledges writes.
    leases = {f"k{i}": (await eventually_acquire(coord, f"k{i}", 10))[0] for i in range(12)}
    waiters = {key: take_and_release(other, key, timeout=30) for key in list(leases)[:6]}
    await asyncio.sleep(0.2)  # queued, and replicated
    victim = cluster6.master_ports()[0]
    dead = next(n for n in cluster6.nodes if n.port == victim)
    dead.kill()
    await asyncio.to_thread(cluster6.wait_promoted)  # its replica took over
    assert victim not in cluster6.master_ports()
    if min_replicas:
        # The promoted master has no replica left: bring the dead one back (it rejoins as
        # the new master's replica), or no write of that shard could be confirmed.
        dead.start(cluster6.server_binary)
        await asyncio.to_thread(cluster6.wait_replicated)
    for key in list(leases)[6:]:  # the cluster is usable again on every slot
        fresh, _ = await eventually_acquire(other, f"{key}-new", within=15)
        await fresh.release()
    if min_replicas:  # every grant was on the promoted replica: nobody lost a lock
        assert not [k for k, lease in leases.items() if lease.lost]
    for lease in leases.values():
        with contextlib.suppress(LeaseLost):
            await lease.release()
    outcomes = await settle(list(waiters.values()), within=40)
    for key, outcome in zip(waiters, outcomes, strict=True):
        if isinstance(outcome, Lease):
            assert outcome.token > leases[key].token
        else:
            assert isinstance(outcome, (BackendError, AcquireTimeout)), outcome
    for key, lease in leases.items():  # tokens keep growing on every key
        again, _ = await eventually_acquire(coord, key, within=10)
        assert again.token > lease.token
        await again.release()


def _migrate_slot(slot: int, source: int, target: int, every: list[int]) -> None:
    """Move ``slot`` from node ``source`` to ``target`` by hand, as ``--cluster reshard`` does."""
    src = redis.Redis(host="127.0.0.1", port=source)
    dst = redis.Redis(host="127.0.0.1", port=target)
    try:
        src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for port in [target, source, *[p for p in every if p not in (source, target)]]:
            node = redis.Redis(host="127.0.0.1", port=port)
            node.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
            node.close()
    finally:
        src.close()
        dst.close()


async def test_slot_migrated_while_requests_wait(
    redis_cluster: ClusterDeployment, connect: Connect
) -> None:
    """A lock's slot moves to another master mid-queue: exclusion holds, every waiter runs."""
    coords = [connect(redis_cluster.url, lease_ttl=3) for _ in range(3)]
    key = "migrating"
    first = await coords[0].acquire(key)
    keys = first._grant.handle.keys  # type: ignore[attr-defined]
    admin = redis.Redis(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    slot = int(admin.execute_command("CLUSTER KEYSLOT", keys[0]))
    admin.close()
    masters = redis_cluster.master_ports()
    source = next(
        p for p in masters
        if redis.Redis(host="127.0.0.1", port=p).execute_command("CLUSTER COUNTKEYSINSLOT", slot)
    )  # fmt: skip
    target = next(p for p in masters if p != source)
    inside, most, done = 0, 0, 0

    async def worker(coord: object) -> None:
        nonlocal inside, most, done
        async with coord.acquire(key, timeout=25):  # type: ignore[attr-defined]
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.02)
            inside -= 1
            done += 1

    tasks = [asyncio.create_task(worker(c)) for c in coords for _ in range(4)]
    await until_waiting(coords[0], key, 12, at_least=True)
    await asyncio.to_thread(_migrate_slot, slot, source, target, masters)
    await first.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 40)  # no waiter stuck
    assert done == 12 and most == 1  # nobody lost, exclusion held
    back = await coords[1].acquire(key, timeout=5)
    assert back.token > first.token
    await back.release()
    # Put the slot back: the shared cluster stays as the session made it.
    await asyncio.to_thread(_migrate_slot, slot, target, source, masters)
