"""Which Redis deployment a URL names, and the redis-py clients that reach it.

Three deployments share one backend (``redis.py``) and differ only in how a command finds
its server:

* ``redis://`` / ``rediss://``: one server; our own connections (``redis/_link.py``).
* ``redis+cluster://h1:7000,h2:7001`` / ``rediss+cluster://``: a Redis Cluster, through
  redis-py's ``RedisCluster``, which routes each script call to the master of its keys'
  slot and follows ``MOVED`` / ``ASK`` redirections (a slot being migrated) and topology
  changes (a failover) by itself. One start-up node is enough; the rest is discovered.
  Never reads from a replica.
* ``redis+sentinel://h1:26379,h2:26379/service[/db]`` / ``rediss+sentinel://``: a primary
  behind Sentinel. Our own connections, each asking the sentinels for the primary's
  address when it connects (``SentinelConnectionPool``); a connection to a demoted primary
  answers ``READONLY``, which redis-py turns into a connection error, so the call is sent
  again on a new connection to the new primary. Never a replica. Sentinel credentials come
  from ``?sentinel_username=&sentinel_password=``; the URL's own userinfo is for the data
  nodes.

Everything here runs before any I/O (validation) or builds clients that connect lazily.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from agentlocks._url import Settings, parse_hosts
from agentlocks.errors import ConfigError

from ._routes import Routes

__all__ = [
    "DEPLOYMENT_OPTIONS",
    "ClusterCalls",
    "Deployment",
    "parse_deployment",
    "sentinel_pool",
]

Kind = Literal["single", "cluster", "sentinel"]

#: Options that only some deployments accept (the others refuse them by name).
DEPLOYMENT_OPTIONS: Final = frozenset({"sentinel_username", "sentinel_password", "min_replicas"})

_KINDS: Final[Mapping[str, tuple[Kind, bool]]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where a Redis URL points: its kind, its hosts, and the credentials for them."""

    kind: Kind
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    min_replicas: int = 0


def parse_deployment(settings: Settings) -> Deployment:
    """Validate the URL, options and client of ``settings``; raise ``ConfigError`` if bad."""
    kind, tls = _KINDS.get(settings.scheme, ("single", settings.scheme.endswith("s")))
    options = settings.options
    if kind != "sentinel":
        given = sorted(n for n in ("sentinel_username", "sentinel_password") if n in options)
        if given:
            raise ConfigError(f"{', '.join(given)} need a redis+sentinel:// URL")
    min_replicas = _min_replicas(options.get("min_replicas", 0))
    if min_replicas and kind == "cluster" and settings.client is not None:
        raise ConfigError("min_replicas needs a redis+cluster:// URL, not a borrowed RedisCluster")
    _check_client(kind, settings.client)
    if kind == "single" or settings.client is not None:
        return Deployment(kind, tls, min_replicas=min_replicas)
    url = settings.url
    parts = urlsplit(url)
    if not parts.netloc.rpartition("@")[2]:
        raise ConfigError(
            f"{settings.scheme}:// needs at least one 'host:port', e.g. "
            f"{'redis+cluster://h1:7000,h2:7001' if kind == 'cluster' else _SENTINEL_EXAMPLE}"
        )
    hosts = parse_hosts(url, 6379 if kind == "cluster" else 26379)
    path = [p for p in parts.path.split("/") if p]
    service, db = None, "0"
    if kind == "cluster":
        if len(path) > 1 or (path and path[0] != "0"):
            raise ConfigError(
                f"a Redis Cluster has only database 0; got path {parts.path!r} in "
                f"{settings.redacted_url!r}"
            )
    else:
        if not path or len(path) > 2:
            raise ConfigError(
                f"redis+sentinel:// needs the service name as its path, e.g. {_SENTINEL_EXAMPLE}"
            )
        service, db = unquote(path[0]), path[1] if len(path) == 2 else "0"
        if not db.isdigit():
            raise ConfigError(f"database must be a number >= 0, got {db!r}")
    return Deployment(
        kind,
        tls,
        hosts,
        service,
        int(db),
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
        _opt_str(options.get("sentinel_username")),
        _opt_str(options.get("sentinel_password")),
        min_replicas,
    )


_SENTINEL_EXAMPLE: Final = "'redis+sentinel://h1:26379,h2:26379/mymaster[/db]'"


def _check_client(kind: Kind, client: object) -> None:
    if client is None:
        return
    if isinstance(client, RedisCluster):
        if kind != "cluster":
            raise ConfigError(
                "redis= got a RedisCluster client but the URL is not redis+cluster:// "
                "(leave the URL out, or use 'redis+cluster://')"
            )
    elif isinstance(client, aioredis.Redis):
        if kind == "cluster":
            raise ConfigError(
                "a redis+cluster:// URL needs a redis.asyncio.cluster.RedisCluster client, "
                "got a redis.asyncio.Redis"
            )
    else:
        raise ConfigError(
            "redis= takes a redis.asyncio.Redis or RedisCluster client, "
            f"got {type(client).__name__}"
        )


def _min_replicas(value: object) -> int:
    try:
        count = int(str(value))
    except ValueError:
        count = -1
    if isinstance(value, (bool, float)) or count < 0:
        raise ConfigError(f"min_replicas must be an int >= 0, got {value!r}")
    return count


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


class ClusterCalls:
    """Script calls on a Redis Cluster: each routed to the master of its keys' slot.

    With our own ``RedisCluster`` (a ``redis+cluster://`` URL), lock scripts go to their
    master on connections of ours (``redis/_routes.py``: fast, ``WAIT`` possible); a
    borrowed client is used through its public API. Either way ``MOVED`` (slot moved for
    good: the slot map is refreshed), ``ASK`` (slot being migrated: sent once to the
    importing node), ``TRYAGAIN`` and connection errors (a failover: the topology is read
    again) are followed. Every script is idempotent per request, so a call sent again
    cannot act twice.
    """

    def __init__(
        self,
        deployment: Deployment,
        client: RedisCluster | None,
        connect_timeout: float,
        max_connections: int,
        ssl: Mapping[str, Any],
        client_name: str,
    ) -> None:
        self._own = client is None
        self.client: RedisCluster = client or _cluster_client(
            deployment, connect_timeout, max_connections, ssl, client_name
        )
        self._routes = Routes(self.client) if self._own else None

    async def execute(self, *args: Any) -> Any:
        """Send one command to the node that owns its keys (``SCRIPT LOAD``: every master)."""
        if self._routes is not None and args[0] in (b"EVALSHA", b"EVAL") and int(args[2]):
            (reply,) = await self._routes.send([args])
            if isinstance(reply, BaseException):
                raise reply
            return reply
        name = args[0].decode() if isinstance(args[0], bytes) else args[0]
        if name == "SCRIPT":
            masters = await self.masters()
            return await self.client.execute_command(name, *args[1:], target_nodes=masters)
        return await self.client.execute_command(name, *args[1:])

    async def execute_many(
        self, commands: Sequence[Sequence[Any]], wait: tuple[int, int] | None = None
    ) -> list[Any]:
        """Send commands pipelined per node; one reply (or error object) each, in order.

        ``wait`` (replicas, ms): ``WAIT`` at the end of each master's pipeline
        (``ReplicaShortfall`` if one confirms fewer).
        """
        if self._routes is not None:
            return await self._routes.send(commands, wait)
        pipe = self.client.pipeline()
        for command in commands:
            name = command[0].decode() if isinstance(command[0], bytes) else command[0]
            pipe.execute_command(name, *command[1:])
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def master_for(self, key: bytes) -> Any:
        """The ``ClusterNode`` that is master of ``key``'s slot now."""
        if self.client._initialize:
            await self.client.initialize()
        return self.client.get_node_from_key(key.decode())

    async def masters(self) -> list[Any]:
        """Every master node of the cluster now."""
        if self.client._initialize:
            await self.client.initialize()
        return list(self.client.get_primaries())

    async def refresh(self) -> None:
        """Re-read the slot map (after a ``MOVED`` answer to a command sent by hand)."""
        await self.client.nodes_manager.initialize()

    def where(self) -> str:
        """The start-up nodes, for messages."""
        nodes = self.client.nodes_manager.startup_nodes
        return ",".join(sorted(nodes)) or "?"

    async def aclose(self) -> None:
        """Close the client if it is ours (a user's stays open)."""
        if self._routes is not None:
            self._routes.close()
        if self._own:
            await self.client.aclose()


def _cluster_client(
    deployment: Deployment,
    connect_timeout: float,
    max_connections: int,
    ssl: Mapping[str, Any],
    client_name: str,
) -> RedisCluster:
    from redis.asyncio.cluster import ClusterNode

    nodes = [ClusterNode(host, port) for host, port in deployment.hosts]
    return RedisCluster(
        startup_nodes=nodes,
        username=deployment.username,
        password=deployment.password,
        ssl=deployment.tls,
        socket_connect_timeout=connect_timeout,
        socket_timeout=None,  # every call is bounded by the link's own timer
        max_connections=max_connections,
        client_name=client_name,
        protocol=2,
        **ssl,
    )


def sentinel_pool(
    deployment: Deployment,
    connect_timeout: float,
    socket_timeout: float,
    client_name: str,
    ssl: Mapping[str, Any],
) -> tuple[Any, Callable[[], Awaitable[None]]]:
    """The primary's connection pool of ``deployment``, and how to close its sentinels.

    Only the pool's connection factory is used: each new connection asks the sentinels
    for the primary's address as it connects.
    """
    manager = Sentinel(  # type: ignore[no-untyped-call]
        list(deployment.hosts),
        sentinel_kwargs={
            "username": deployment.sentinel_username,
            "password": deployment.sentinel_password,
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": socket_timeout,
            "ssl": deployment.tls,
            "protocol": 2,
            # One try per sentinel, no backoff: a sentinel that refuses (down, wrong
            # password) is skipped at once for the next one, within connect_timeout.
            "retry": Retry(NoBackoff(), 0),
        },
    )
    assert deployment.service is not None  # parse_deployment requires it
    client = manager.master_for(
        deployment.service,
        db=deployment.db,
        username=deployment.username,
        password=deployment.password,
        ssl=deployment.tls,
        socket_timeout=None,  # every call is bounded by the link's own timer
        socket_connect_timeout=connect_timeout,
        client_name=client_name,
        protocol=2,
        **ssl,
    )

    async def close() -> None:
        await client.aclose()
        for one in manager.sentinels:
            await one.aclose()

    return client.connection_pool, close
