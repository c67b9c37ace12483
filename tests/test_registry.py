"""``coord.registry(name)``: readers share, writers exclude, the generation only grows.

``backend_url`` (one backend per param), ``namespace`` and ``coord`` are tests/conftest.py's.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

import agentlocks
from agentlocks import AcquireTimeout, Coordinator, Registry
from tests.support.waiting import until_waiting

#: Bound for "it did not hang": far above any expected time, far below the test timeout.
NO_HANG = 20.0

#: Run in another OS process: connect, then print the registry's version, or write and
#: print the published generation.
CHILD = """
import sys, anyio, agentlocks

async def main() -> None:
    url, namespace, name, action = sys.argv[1:]
    async with agentlocks.connect(url, namespace=namespace) as coord:
        tools = coord.registry(name)
        if action == "write":
            async with tools.write() as generation:
                pass
            print(generation)
        else:
            print(await tools.version())

anyio.run(main)
"""


@pytest.fixture
def tools(coord: Coordinator) -> Registry:
    """The registry under test."""
    return coord.registry("tool-registry")


async def waiting(coord: Coordinator, registry: Registry) -> int:
    """How many requests wait on the registry's lock (the lock named like the registry)."""
    return (await coord.inspect(registry.name)).waiting


async def settle(coord: Coordinator, registry: Registry, count: int) -> None:
    """Wait until ``count`` requests wait on the registry (bounded by NO_HANG)."""
    await until_waiting(coord, registry.name, count, timeout=NO_HANG)


def require_shared_state(coord: Coordinator) -> None:
    """Skip on in-process backends: another process (or coordinator) has its own state."""
    if not coord.backend.shared_state:
        pytest.skip(f"{coord!r} keeps its state in-process; replicas do not share it")


async def test_version_starts_at_zero_and_a_write_publishes_the_next(tools: Registry) -> None:
    """Before any write the version is 0; a write yields and publishes current + 1."""
    assert await tools.version() == 0
    async with tools.write() as generation:
        assert generation == 1
        assert await tools.version() == 0  # not published until the block exits cleanly
    assert await tools.version() == 1
    async with tools.read() as seen:
        assert seen == 1


async def test_readers_overlap(tools: Registry) -> None:
    """Two readers hold the registry at the same time."""
    inside = 0
    both = asyncio.Event()

    async def reader() -> None:
        nonlocal inside
        async with tools.read():
            inside += 1
            if inside == 2:
                both.set()
            await both.wait()  # each reader stays until the other is inside too

    await asyncio.wait_for(asyncio.gather(reader(), reader()), NO_HANG)


async def test_a_writer_waits_for_readers_and_blocks_later_readers(
    coord: Coordinator, tools: Registry
) -> None:
    """A writer queued behind a reader runs before a reader that arrived after it."""
    events: list[str] = []
    release_first = asyncio.Event()

    async def first_reader() -> None:
        async with tools.read() as seen:
            events.append(f"read1@{seen}")
            await release_first.wait()
            events.append("read1-done")

    async def writer() -> None:
        async with tools.write() as generation:
            events.append(f"write@{generation}")

    async def late_reader() -> None:
        async with tools.read() as seen:
            events.append(f"read2@{seen}")

    tasks = [asyncio.create_task(first_reader())]
    while not events:
        await asyncio.sleep(0.002)
    tasks.append(asyncio.create_task(writer()))
    await settle(coord, tools, 1)
    tasks.append(asyncio.create_task(late_reader()))
    await settle(coord, tools, 2)
    assert events == ["read1@0"]  # the late reader does not join the first one
    release_first.set()
    await asyncio.wait_for(asyncio.gather(*tasks), NO_HANG)
    assert events == ["read1@0", "read1-done", "write@1", "read2@1"]


async def test_a_failed_write_publishes_nothing(tools: Registry) -> None:
    """A write block that raises leaves the version as it was; the next write reuses it."""
    async with tools.write():
        pass
    with pytest.raises(LookupError):
        async with tools.write() as generation:
            assert generation == 2
            raise LookupError("reload failed")
    assert await tools.version() == 1
    async with tools.write() as generation:
        assert generation == 2
    assert await tools.version() == 2


async def test_a_cancelled_write_publishes_nothing_and_frees_the_registry(
    coord: Coordinator, tools: Registry
) -> None:
    """Cancelling a writer mid-block publishes nothing and leaves no holder or waiter."""
    entered = asyncio.Event()

    async def writer() -> None:
        async with tools.write():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(writer())
    await asyncio.wait_for(entered.wait(), NO_HANG)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await tools.version() == 0
    info = await coord.inspect(tools.name)
    assert info.holders == () and info.waiting == 0


async def test_write_timeout_raises_acquire_timeout(coord: Coordinator, tools: Registry) -> None:
    """A writer that cannot get the registry within ``timeout`` fails and leaves the queue."""
    async with tools.read():
        with pytest.raises(AcquireTimeout):
            async with tools.write(timeout=0.05):
                pytest.fail("must not be granted while a reader holds the registry")
        assert await waiting(coord, tools) == 0
    assert await tools.version() == 0


async def test_the_version_never_goes_backwards(tools: Registry) -> None:
    """Under concurrent writers and readers, each reader sees a non-decreasing version."""
    seen: list[list[int]] = [[], [], []]

    async def reader(log: list[int]) -> None:
        for _ in range(15):
            async with tools.read() as version:
                log.append(version)
            log.append(await tools.version())
            await asyncio.sleep(0)

    async def writer(fail_every: int) -> None:
        for n in range(5):
            try:
                async with tools.write():
                    if n % fail_every == 0:
                        raise LookupError
            except LookupError:
                pass

    await asyncio.wait_for(
        asyncio.gather(*(reader(log) for log in seen), writer(2), writer(3)), NO_HANG
    )
    for log in seen:
        assert log == sorted(log), log
    # writer(2) fails for n = 0, 2, 4 and writer(3) for n = 0, 3: 10 writes, 5 failed.
    assert await tools.version() == 5


async def test_publishing_a_lower_generation_keeps_the_higher(coord: Coordinator) -> None:
    """The backend's publish never lowers the generation (the registry relies on it)."""
    async with coord.acquire("tool-registry") as lease:
        grant = lease._held_grant()
        assert await coord.backend.publish_generation("tool-registry", 5, grant)
        assert await coord.backend.publish_generation("tool-registry", 3, grant)
    assert await coord.registry("tool-registry").version() == 5


async def test_a_released_writer_publishes_nothing(coord: Coordinator) -> None:
    """Publishing is fenced: a grant that is no longer held writes no generation."""
    async with coord.acquire("tool-registry") as lease:
        grant = lease._held_grant()
    assert not await coord.backend.publish_generation("tool-registry", 7, grant)
    assert await coord.registry("tool-registry").version() == 0


async def test_a_second_coordinator_sees_the_new_generation(
    coord: Coordinator, tools: Registry, backend_url: str, namespace: str
) -> None:
    """Another coordinator on the same server and namespace reads what this one published."""
    require_shared_state(coord)
    async with agentlocks.connect(backend_url, namespace=namespace) as other:
        replica = other.registry(tools.name)
        assert await replica.version() == 0
        async with tools.write():
            pass
        assert await replica.version() == 1
        async with replica.read() as seen:
            assert seen == 1


async def run_child(url: str, namespace: str, name: str, action: str) -> int:
    """Run CHILD in a new Python process and return the generation it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, namespace, name, action,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), NO_HANG)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    return int(out.decode().strip())


async def test_another_process_sees_the_new_generation(
    coord: Coordinator, tools: Registry, backend_url: str, namespace: str
) -> None:
    """A coordinator in another OS process reads the published generation, and vice versa."""
    require_shared_state(coord)
    async with tools.write():
        pass
    async with tools.write():
        pass
    assert await run_child(backend_url, namespace, tools.name, "version") == 2
    assert await run_child(backend_url, namespace, tools.name, "write") == 3
    assert await tools.version() == 3
