"""A loopback TCP proxy that can silently drop traffic: a partition, not a reset.

``PartitionProxy(port)`` listens on a free loopback port and forwards every connection to
``127.0.0.1:port``. ``partition()`` stops forwarding in both directions while keeping every
socket open: bytes are read and thrown away, so neither side sees a reset, a FIN or an
answer, just silence (what a dead switch or a dropped route looks like). ``heal()``
forwards again (bytes dropped meanwhile stay lost, as on a real network). ``cut()`` closes
every open connection with a reset, for contrast.

It runs its own event loop in a thread, so a test whose loop is stalled (a blocking call in
a lock holder) does not stall the "network" too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self

__all__ = ["PartitionProxy"]


class PartitionProxy:
    """Forward ``127.0.0.1:<port>`` to ``127.0.0.1:<target>``; partition on demand."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._dropping = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # ours, strongly referenced
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="partition-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0
        self.dropped = 0  # bytes thrown away while partitioned
        #: Seconds each chunk is held before it is forwarded (each way): a slow network.
        self.delay = 0.0

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def url_for(self, url: str, target_port: int | None = None) -> str:
        """Return ``url`` with its port replaced by this proxy's."""
        port = target_port or self._target[1]
        return url.replace(f":{port}", f":{self.port}", 1)

    def partition(self) -> None:
        """Silently drop everything, both ways, on every connection (new ones too)."""
        self._dropping = True

    def heal(self) -> None:
        """Forward again."""
        self._dropping = False

    def cut(self) -> None:
        """Reset every open connection (RST, not FIN)."""
        self._loop.call_soon_threadsafe(self._reset_all)

    def close(self) -> None:
        """Stop the proxy and close every connection."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- the proxy's own loop ---------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        # Sweep again before closing: nothing may be left pending on a closed loop (a task's
        # ``finally`` would run at garbage collection) or open (an unclosed socket).
        self._loop.run_until_complete(self._sweep())
        self._loop.close()

    async def _shutdown(self) -> None:
        # Connections the server already accepted get their transport first: asyncio (3.11)
        # makes it in a task of its own, and one that runs after close() fails and never
        # closes its socket. No loop turn separates the wait from close(): nothing new starts.
        await self._others()
        if self._server is not None:
            self._server.close()
        self._reset_all()
        if self._server is not None:
            await self._server.wait_closed()
        await self._sweep()

    async def _others(self) -> None:
        """Wait (at most 5 s) for the loop's tasks that are not ours: asyncio's accepts."""
        current = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not current and t not in self._tasks]
        if others:
            await asyncio.wait(others, timeout=5)

    async def _sweep(self) -> None:
        """End every connection: cancel the forwarding tasks, then reset what is left."""
        while self._tasks:
            ours = list(self._tasks)
            for task in ours:
                task.cancel()
            await asyncio.gather(*ours, return_exceptions=True)
            await self._others()  # not cancelled: a cancelled accept leaks its socket
        # A _forward task cancelled before its first step never ran its ``finally``.
        self._reset_all()
        await asyncio.sleep(0)  # the aborted transports close their sockets on the next turn

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                if sock is not None:  # SO_LINGER 0: close() sends a reset
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._writers.clear()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain function, so the server calls it as the connection is made: the transport
        # is tracked before its task exists. A task cancelled before its first step (a
        # shutdown's sweep reaching a connection accepted meanwhile) never runs its
        # ``finally``; _reset_all after the sweep closes what it would have.
        self._writers.add(writer)
        self._spawn(self._forward(reader, writer))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task of ours (the sweep cancels it; _others does not wait for it)."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Every transport is tracked from the start and aborted on any way out (a connect
        # that fails, a shutdown cancelling this task half-way): nothing is left unclosed.
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
            self._writers.add(up_writer)
            pumps = [
                self._spawn(self._pump(reader, up_writer)),
                self._spawn(self._pump(up_reader, writer)),
            ]
            await asyncio.gather(*pumps, return_exceptions=True)
        except OSError:
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                # A partition drops the FIN too: the other side must not learn of the close
                # (a client dropping its connection would otherwise free its server session).
                while self._dropping and self._thread.is_alive():
                    await asyncio.sleep(0.05)
                writer.close()
                return
            if self._dropping:
                self.dropped += len(data)
                continue
            if self.delay:
                await asyncio.sleep(self.delay)
            writer.write(data)
            await writer.drain()
