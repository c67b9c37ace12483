"""Script calls routed over a Redis Cluster on connections of our own.

redis-py's ``RedisCluster`` keeps the slot map (which master owns which slot) and is used
for everything rare (``SCRIPT LOAD``, ``CONFIG GET``, topology refresh). The hot path, a
lock script, goes straight to its slot's master on a connection of ours, like
``redis/_link.py`` does on one server: the cluster client's per-command machinery costs
about as much CPU as the round trip itself. A batch (renewals) is split by master and sent
as one pipeline per master, concurrently.

Redirections and failures, each retried a few times (every script is idempotent per
request, so a call sent again cannot act twice; the whole call stays bounded by the
link's timer):

* ``MOVED``: the slot has a new owner for good (resharding done, or a failover): the slot
  map is read again and the call sent to the new owner.
* ``ASK``: the slot is being migrated and the keys are already at the importing node: the
  call is sent there once, after ``ASKING``.
* ``TRYAGAIN`` (a multi-key call while the keys are split between the two nodes of a
  migration) and ``CLUSTERDOWN`` (a failover in progress): sent again a moment later.
* A connection error (a master died): the slot map is read again, then the call resent.

``WAIT`` for ``min_replicas`` is sent at the end of each master's pipeline, so it covers
the writes it follows on that master.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["ReplicaShortfall", "Routes"]

#: Times a call is sent before its last error is the answer.
ATTEMPTS: Final = 6
#: Seconds before sending again after TRYAGAIN / CLUSTERDOWN / a lost node (grows).
PAUSE: Final = 0.05


class ReplicaShortfall(Exception):
    """A master's ``WAIT`` saw fewer replicas than asked for (``acked`` of them)."""

    def __init__(self, acked: int) -> None:
        super().__init__(acked)
        self.acked = acked


class Routes:
    """Send commands to their slots' masters on our own connections (module docstring)."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._idle: dict[str, list[Any]] = {}  # node name -> our idle connections to it
        self.closed = False

    async def send(
        self, commands: Sequence[Sequence[Any]], wait: tuple[int, int] | None = None
    ) -> list[Any]:
        """One reply (or error object) per command, in order; ``wait``: (replicas, ms).

        Raises:
            ReplicaShortfall: ``wait`` was given and a master confirmed too few replicas.
            redis ConnectionError / OSError: a node stayed unreachable.
        """
        if len(commands) == 1 and wait is None and not self._client._initialize:
            # The hot path (one lock script): straight to its master, no bookkeeping.
            # Anything but a plain reply goes the long way, which retries it.
            try:
                (reply,) = await self._pipeline(self._master(commands[0]), commands, (False,), None)
            except (RedisConnectionError, OSError):
                pass
            else:
                if not isinstance(reply, (AskError, TryAgainError, ClusterDownError)):
                    return [reply]
        results: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        asking: dict[int, tuple[str, int]] = {}
        failure: BaseException | None = None
        for attempt in range(ATTEMPTS):
            if self._client._initialize:
                await self._client.initialize()
            groups: dict[str, tuple[Any, list[int]]] = {}
            for i in todo:
                node = self._node_at(*asking[i]) if i in asking else self._master(commands[i])
                groups.setdefault(node.name, (node, []))[1].append(i)
            calls = [
                self._pipeline(node, [commands[i] for i in idx], [i in asking for i in idx], wait)
                for node, idx in groups.values()
            ]
            if len(calls) == 1:  # the common case: no task per call
                try:
                    outcomes: list[Any] = [await calls[0]]
                except (RedisConnectionError, OSError, ResponseError) as exc:
                    outcomes = [exc]
            else:
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
            retry: list[int] = []
            refresh = pause = False
            for (_, idx), outcome in zip(groups.values(), outcomes, strict=True):
                if isinstance(outcome, (RedisConnectionError, OSError)):
                    failure, refresh, pause = outcome, True, True
                    retry += idx
                    continue
                if isinstance(outcome, BaseException):
                    raise outcome
                for i, reply in zip(idx, outcome, strict=True):
                    if isinstance(reply, MovedError):
                        asking.pop(i, None)
                        refresh = True
                    elif isinstance(reply, AskError):
                        asking[i] = reply.node_addr
                    elif isinstance(reply, (TryAgainError, ClusterDownError)):
                        pause = True
                    else:
                        results[i] = reply
                        asking.pop(i, None)
                        continue
                    failure = reply
                    retry.append(i)
            if not retry:
                return results
            todo = retry
            if pause:
                await asyncio.sleep(PAUSE * (attempt + 1))
            if refresh:
                try:
                    await self._client.nodes_manager.initialize()
                except Exception as exc:  # every start-up node down for now: try later
                    failure = exc
        for i in todo:  # the last answer of each call that never went through
            results[i] = failure
        if isinstance(failure, (RedisConnectionError, OSError)):
            raise failure
        return results

    def _master(self, command: Sequence[Any]) -> Any:
        # EVALSHA sha numkeys key...: every key of a call shares one slot (one hash tag).
        slot = self._client.keyslot(command[3])
        return self._client.nodes_manager.get_node_from_slot(slot)

    def _node_at(self, host: str, port: int) -> Any:
        node = self._client.nodes_manager.get_node(host, port)
        if node is None:  # a node the slot map does not know yet
            from redis.asyncio.cluster import ClusterNode

            model = self._client.get_default_node()
            kwargs = dict(model.connection_kwargs)
            kwargs.pop("host", None)
            kwargs.pop("port", None)
            node = ClusterNode(host, port, connection_class=model.connection_class, **kwargs)
        return node

    async def _pipeline(
        self,
        node: Any,
        commands: Sequence[Sequence[Any]],
        asking: Sequence[bool],
        wait: tuple[int, int] | None,
    ) -> list[Any]:
        idle = self._idle.get(node.name)
        if idle is None:
            idle = self._idle[node.name] = []
        conn = idle.pop() if idle else node.connection_class(**node.connection_kwargs)
        packed: list[Sequence[Any]] = []
        for command, ask in zip(commands, asking, strict=True):
            if ask:
                packed.append((b"ASKING",))
            packed.append(command)
        if wait is not None:
            packed.append((b"WAIT", *wait))
        try:
            if not conn.is_connected:
                await conn.connect()
            await conn.send_packed_command(conn.pack_commands(packed), False)
            replies: list[Any] = []
            for reply_to in packed:
                try:
                    reply = await conn.read_response()
                except ResponseError as exc:  # an error reply: the next replies follow
                    reply = exc
                if reply_to[0] != b"ASKING":
                    replies.append(reply)
        except BaseException:
            # Cancelled or broken mid-flight: a reply may still be on its way, so this
            # connection must never be read again by another call.
            conn._close()
            raise
        if self.closed:
            conn._close()
        else:
            idle.append(conn)
        if wait is not None:
            acked = replies.pop()
            if isinstance(acked, BaseException):
                raise acked
            if int(acked) < wait[0]:
                raise ReplicaShortfall(int(acked))
        return replies

    def close(self) -> None:
        """Close every idle connection; calls in flight close theirs when they end."""
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn._close()
        self._idle.clear()
