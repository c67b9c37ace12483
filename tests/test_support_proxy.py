"""The partition proxy of the test support: forwards, then goes silent without a reset."""

from __future__ import annotations

import asyncio

from tests.support.proxy import PartitionProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_partition_drops_silently_and_heal_forwards_again() -> None:
    """While partitioned nothing comes back and nothing resets; healed, traffic flows."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with PartitionProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.read(4), 5) == b"ping"
        proxy.partition()
        writer.write(b"lost")
        await writer.drain()
        pending = asyncio.ensure_future(reader.read(4))
        done, _ = await asyncio.wait([pending], timeout=0.5)
        assert not done  # silence: no data, no EOF, no reset
        assert not reader.at_eof()
        proxy.heal()
        writer.write(b"back")
        assert await asyncio.wait_for(pending, 5) == b"back"
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()
