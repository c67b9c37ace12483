"""How one Redis backend talks to its server: connections, call deadlines, errors.

* Options (``connect_timeout``, ``socket_timeout``, ``max_connections``, ``ssl_*``) are
  checked when the backend is built, before any I/O.
* Commands run on connections of our own, made on demand from the URL's settings (a
  redis-py ``ConnectionPool`` parses them; we only use its connection factory). A call
  borrows an idle connection, sends its command, reads the reply and gives it back: no
  pool lock, retry wrapper or per-command hooks, which on a small machine cost about as
  much CPU as the rest of the call. At most ``max_connections`` calls are in flight (a
  FIFO gate; a call beyond it waits, untimed, except lease renewals, which wait at its
  front and are bounded by their lease), so there are never more connections. Script
  calls are encoded by ``redis/_resp.py`` (each lock's ``EVALSHA`` head cached).
* A connection the server closed while it sat idle (a restart, an idle timeout) fails on
  its next use; the call is then sent once more on a new connection. Every script is
  idempotent per request, so a repeat cannot do anything twice.
* A user's own client (``connect(redis=client)``) is used through its public API and
  never closed.
* Every call is bounded by ``socket_timeout`` (one shared timer, ``redis/_flow.py``), and
  cleanup calls (release, withdrawal) by their lease's TTL if that is shorter; renewals get
  their deadline from the coordinator (their lease), not from ``socket_timeout``; new
  connections by ``connect_timeout``. Driver errors become ``BackendError`` with the driver
  error as ``__cause__`` and the password masked. A call cancelled mid-flight leaves its
  connection closed by redis-py, so no reply is ever read by the wrong caller.
* The inbox is a connection of its own (RESP2 pub/sub, no read timeout: it waits for
  messages), made with the same settings.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from agentlocks._tasks import TaskSupervisor
from agentlocks._url import Settings
from agentlocks.errors import BackendError, ConfigError

from ._clients import DEPLOYMENT_OPTIONS, ClusterCalls, parse_deployment, sentinel_pool
from ._flow import CallTimer, Gate
from ._resp import pack_script
from ._routes import ReplicaShortfall
from ._scripts import Call, Script, cluster_variant, run_batch, run_script

__all__ = ["OPTION_NAMES", "Link"]

T = TypeVar("T")

logger = logging.getLogger("agentlocks")

DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_SOCKET_TIMEOUT: Final = 5.0
DEFAULT_MAX_CONNECTIONS: Final = 32
_SSL_OPTIONS: Final = frozenset({"ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile"})
#: The backend options accepted in the URL query or as ``connect()`` keywords.
OPTION_NAMES: Final = frozenset({"connect_timeout", "socket_timeout", "max_connections"}) | (
    _SSL_OPTIONS | DEPLOYMENT_OPTIONS
)
#: Scripts whose writes must reach ``min_replicas`` replicas before their reply counts:
#: a grant (acquire), a lease extension (renew) and a published generation.
DURABLE: Final = frozenset({"acquire", "renew", "generation"})
# OSError includes TimeoutError and refused sockets.
FAILURES: Final = (RedisError, RedisClusterException, OSError)


class Link:
    """The connections, deadlines and error mapping of one backend."""

    def __init__(
        self, settings: Settings, client_name: str, tasks: TaskSupervisor | None = None
    ) -> None:
        options = settings.options
        self.connect_timeout = _seconds(options, "connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        self.socket_timeout = _seconds(options, "socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        self.max_connections = _count(options, "max_connections", DEFAULT_MAX_CONNECTIONS)
        self._ssl = {k: v for k, v in options.items() if k in _SSL_OPTIONS}
        # Single server, cluster or sentinel; URL, options and client checked here.
        self.deployment = parse_deployment(settings)
        if self._ssl and not self.deployment.tls:
            raise ConfigError(f"{', '.join(sorted(self._ssl))} need a rediss:// URL")
        self._user_client: Any = settings.client
        # WAIT after every durable write (same connection: WAIT covers that client's
        # writes, and everything the primary wrote before them, as replication keeps order).
        self.min_replicas = self.deployment.min_replicas
        self._wait_ms = max(1, int(self.socket_timeout * 800))  # within the call's bound
        self._ask_sentinels = self.deployment.kind == "sentinel" and settings.client is None
        self.cluster: ClusterCalls | None = None  # the cluster's router (redis+cluster://)
        self._closers: list[Callable[[], Awaitable[None]]] = []
        parts = urlsplit(settings.url)
        self._secrets = [p for p in (parts.password, self.deployment.sentinel_password) if p]
        self._base_url = urlunsplit(parts._replace(query="", fragment=""))
        self._redacted_url = settings.redacted_url
        self.client_name = client_name
        self._tasks = tasks  # runs the one-off eviction policy check
        self.pool: Any = None  # made on first use: nothing here does I/O
        self.closed = False
        self._idle: list[Any] = []  # our connections not in use (connected, or to reconnect)
        self._slots = Gate(self.max_connections)
        self._timer = CallTimer(self.socket_timeout)
        self._execute: Callable[..., Awaitable[Any]] = self._execute_ours
        self._ours = True  # commands go on our own connections (not a cluster's or a user's)
        self._execute_many: Callable[..., Awaitable[list[Any]]] = self._execute_many_ours

    @property
    def used(self) -> bool:
        """True once a connection may have been made (something to release at close)."""
        return self.pool is not None

    def _connect(self) -> None:
        if self.closed:
            raise ConfigError("this coordinator is closed")
        if self._tasks is not None and not self._tasks.closed:
            self._tasks.spawn(self._check_eviction(), name="redis eviction policy check")
        if self.deployment.kind == "cluster":
            # redis-py's RedisCluster routes each call to its slot's master and follows
            # MOVED / ASK and failovers (redis/_clients.py); ours is closed by aclose().
            self.cluster = ClusterCalls(
                self.deployment, self._user_client, self.connect_timeout,
                self.max_connections, self._ssl, self.client_name,
            )  # fmt: skip
            self.pool = self.cluster
            self._ours = False
            self._execute = self.cluster.execute
            self._execute_many = self.cluster.execute_many
            self._closers.append(self.cluster.aclose)
        elif self._user_client is not None:
            self.pool = self._user_client.connection_pool
            self._ours = False
            self._execute = self._user_client.execute_command
            self._execute_many = self._execute_many_theirs
        elif self.deployment.kind == "sentinel":
            # Our own connections, each asking the sentinels where the primary is when it
            # connects; a demoted primary's READONLY drops the connection (a retry goes to
            # the new primary). Never a replica.
            self.pool, closer = sentinel_pool(
                self.deployment, self.connect_timeout, self.socket_timeout, self.client_name,
                self._ssl,
            )  # fmt: skip
            self._closers.append(closer)
        else:
            # Our connections have no socket_timeout: every call is bounded by our own
            # timer, which is cheaper than redis-py's (a task per command).
            self.pool = aioredis.ConnectionPool.from_url(
                self._base_url,
                socket_timeout=None,
                socket_connect_timeout=self.connect_timeout,
                client_name=self.client_name,
                protocol=2,
                **self._ssl,
            )

    def run(self, script: Script, keys: Sequence[bytes], *args: object) -> Awaitable[Any]:
        """Run one script call (await it): one round trip, bounded by ``socket_timeout``."""
        return self._guarded(self._script_call(script, keys, args))

    def run_within(
        self, seconds: float, script: Script, keys: Sequence[bytes], *args: object
    ) -> Awaitable[Any]:
        """:meth:`run`, bounded by ``seconds`` if that is shorter than ``socket_timeout``.

        For cleanup whose answer is worthless after a lease's lifetime (a release, a
        withdrawal): past it the server has freed the grant or the queue entry by itself.
        """
        return self._guarded(self._script_call(script, keys, args), seconds)

    def _script_call(
        self, script: Script, keys: Sequence[bytes], args: Sequence[object]
    ) -> Coroutine[Any, Any, Any]:
        if self.pool is None:
            self._connect()
        if self.cluster is not None:
            script = cluster_variant(script)
        if self._durable(script):
            return run_script(self._execute_durable, script, keys, *args)
        if self._ours:
            return self._run_ours(script, keys, args)
        return run_script(self._execute, script, keys, *args)

    async def batch(
        self, script: Script, calls: Sequence[Call], *, urgent: bool = False
    ) -> list[Any]:
        """Run one script call per entry of ``calls`` in one pipelined round trip.

        ``urgent`` (lease renewal) waits for a connection ahead of every other call.
        """
        if not calls:
            return []
        if self.pool is None:
            self._connect()
        if self.cluster is not None:
            script = cluster_variant(script)
        if self._durable(script):
            work = run_batch(self._execute_durable, self._execute_many_durable, script, calls)
        else:
            work = run_batch(self._execute, self._execute_many, script, calls)
        return await self._guarded(work, urgent=urgent)

    async def command(self, *args: object) -> Any:
        """Send one plain command (``SCAN``, ...); bounded and mapped like a script call."""
        if self.pool is None:
            self._connect()

        async def call() -> Any:
            return await self._execute(*args)

        return await self._guarded(call())

    async def pipeline(self, commands: Sequence[Sequence[object]]) -> list[Any]:
        """Send plain commands in one pipelined round trip; one reply (or error) each."""
        if self.pool is None:
            self._connect()

        async def call() -> list[Any]:
            return await self._execute_many(commands)

        return await self._guarded(call())

    async def _guarded(
        self, work: Coroutine[Any, Any, T], seconds: float | None = None, *, urgent: bool = False
    ) -> T:
        slots = self._slots
        if not slots.enter_now():
            try:
                await slots.enter(urgent=urgent)
            except BaseException:
                work.close()  # never started
                raise
        task = self._timer.start(seconds)
        try:
            return await work
        except FAILURES as exc:
            raise self.error(exc) from exc
        except asyncio.CancelledError:
            if self._timer.expired(task):
                bound = (
                    self.socket_timeout if seconds is None else min(seconds, self.socket_timeout)
                )
                raise BackendError(
                    f"Redis at {self._where()} did not answer within {bound:g} s"
                    + (" (socket_timeout)" if bound == self.socket_timeout else "")
                ) from None
            raise
        finally:
            self._timer.stop(task)
            slots.leave()

    # -- eviction policy --------------------------------------------------------------------------

    async def _check_eviction(self) -> None:
        """Warn once if the server may evict a held lock's keys (every one has a TTL)."""
        try:
            if self.cluster is not None:
                masters = await self.cluster.masters()
                replies = await self.cluster.client.execute_command(
                    "CONFIG", "GET", "maxmemory-policy", target_nodes=masters
                )
                found = [_policy(r) for r in dict(replies).values()]
            else:

                async def config_get() -> Any:
                    return await self._execute(b"CONFIG", b"GET", b"maxmemory-policy")

                found = [_policy(await self._guarded(config_get()))]
        except (*FAILURES, BackendError) as exc:  # CONFIG is often disabled on managed Redis
            logger.debug("could not read maxmemory-policy: %r", exc)
            return
        unsafe = sorted({p for p in found if p and p != "noeviction"})
        if unsafe:
            logger.warning(
                "Redis at %s has maxmemory-policy %s: under memory pressure it may evict the "
                "keys of a held lock (a second holder, no LeaseLost). Use 'noeviction' or a "
                "dedicated instance for agentlocks.",
                self._where(), "/".join(unsafe),
            )  # fmt: skip

    # -- min_replicas ---------------------------------------------------------------------------

    def _durable(self, script: Script) -> bool:
        return self.min_replicas > 0 and script.name in DURABLE

    async def _execute_durable(self, *args: object) -> Any:
        if args[0] == b"SCRIPT":  # SCRIPT LOAD writes nothing to replicate
            return await self._execute(*args)
        (reply,) = await self._execute_many_durable([args])
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def _execute_many_durable(self, commands: Sequence[Sequence[object]]) -> list[Any]:
        """``commands`` then ``WAIT`` on one connection; BackendError if too few replicas."""
        if self.cluster is not None:
            try:  # one WAIT per master, after its share of the commands
                return await self.cluster.execute_many(commands, (self.min_replicas, self._wait_ms))
            except ReplicaShortfall as exc:
                raise self._shortfall(exc.acked) from None
        wait = (b"WAIT", self.min_replicas, self._wait_ms)
        replies = await self._execute_many([*commands, wait])
        acked = replies.pop()
        if isinstance(acked, BaseException):
            raise acked
        if int(acked) < self.min_replicas:
            raise self._shortfall(int(acked))
        return replies

    def _shortfall(self, acked: int) -> BackendError:
        return BackendError(
            f"only {acked} replica(s) of Redis at {self._where()} confirmed a write "
            f"within {self._wait_ms} ms; min_replicas={self.min_replicas}"
        )

    # -- our connections ----------------------------------------------------------------------

    async def _execute_ours(self, *args: object) -> Any:
        async def io(conn: Any) -> Any:
            return await _request(conn, conn.pack_command(*args))

        return await self._on_connection(io)

    async def _run_ours(self, script: Script, keys: Sequence[bytes], args: Sequence[object]) -> Any:
        """A script call on our connections, encoded by ``redis/_resp.py`` (cached head)."""
        packed = pack_script(script.sha, keys, args)

        async def io(conn: Any) -> Any:
            return await _request(conn, packed)

        try:
            return await self._on_connection(io)
        except NoScriptError:  # first use, or a restarted server: EVAL caches it again
            return await self._execute_ours(b"EVAL", script.text, len(keys), *keys, *args)

    async def _execute_many_ours(self, commands: Sequence[Sequence[object]]) -> list[Any]:
        async def io(conn: Any) -> list[Any]:
            await conn.send_packed_command(conn.pack_commands(commands), False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # an error reply: the next replies follow
                    replies.append(exc)
            return replies

        return await self._on_connection(io)

    async def _on_connection(self, io: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``io`` (send, then read the reply) on an idle connection, or a new one.

        A connection the server closed while it sat idle (a restart, an idle timeout)
        fails at its next use: then every idle connection is dropped (they are likely
        dead too) and ``io`` runs once more on a new connection. Safe because every
        script is idempotent per request.
        """
        reused = bool(self._idle)
        conn = self._idle.pop() if reused else self.pool.make_connection()
        while True:
            try:
                if self._ask_sentinels and not conn.is_connected:
                    # send_packed_command would connect to its last address (none yet);
                    # connect() asks the sentinels where the primary is now.
                    await conn.connect()
                result = await io(conn)
            except ResponseError:
                self._give_back(conn)  # an error reply: the connection itself is fine
                raise
            except RedisConnectionError:
                if not reused:
                    raise  # redis-py has closed it
                self._drop_idle()
                reused, conn = False, self.pool.make_connection()
                continue
            self._give_back(conn)
            return result

    def _give_back(self, conn: Any) -> None:
        if self.closed:
            _close(conn)  # closing: nothing will use it again
        else:
            self._idle.append(conn)

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)

    async def _execute_many_theirs(self, commands: Sequence[Sequence[object]]) -> list[Any]:
        pipe = self._user_client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    # -- the inbox -------------------------------------------------------------------------------

    async def open_inbox(self, channel: str) -> Any:
        """A new connection subscribed to ``channel``; ``BackendError`` if impossible."""
        if self.pool is None:
            self._connect()
        model: Any = self.pool
        if isinstance(model, ClusterCalls):
            # Classic pub/sub on a cluster: a message published on any node reaches the
            # subscribers of every node, so any master will do (the grants' hand-off uses
            # sharded pub/sub instead: redis/_shards.py). Chosen anew on every reconnect.
            model = (await model.masters())[0]
        conn = await self.open_subscriber(model.connection_class, model.connection_kwargs)
        try:
            async with asyncio.timeout(self.socket_timeout):
                await conn.send_command("SUBSCRIBE", channel)
                await conn.read_response()  # the subscription is confirmed
        except BaseException as exc:
            await conn.disconnect()
            if isinstance(exc, FAILURES):
                raise self.error(exc) from exc
            raise
        return conn

    async def open_subscriber(self, connection_class: Any, settings: Mapping[str, Any]) -> Any:
        """A new connected pub/sub connection made like ``settings`` say (no read timeout)."""
        kwargs = dict(settings)
        kwargs.update(
            socket_timeout=None,  # it waits for messages: reads must not time out
            protocol=2,  # plain pub/sub frames, whatever the user's client speaks
            client_name=self.client_name + ":inbox",
        )
        # redis-py >= 7 may enable server maintenance notifications, which need RESP3;
        # this private connection only ever reads our own channel, so it goes without.
        for name in ("maint_notifications_config", "maint_notifications_pool_handler"):
            if name in kwargs:
                kwargs[name] = None
        try:
            conn = connection_class(**kwargs)
        except FAILURES as exc:
            raise self.error(exc) from exc
        try:
            async with asyncio.timeout(self.connect_timeout):
                await conn.connect()
        except BaseException as exc:
            await conn.disconnect()
            if isinstance(exc, FAILURES):
                raise self.error(exc) from exc
            raise
        return conn

    # -- closing and errors ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close our connections (a user's client stays open); refuse further calls.

        A call still in flight closes its connection when it ends.
        """
        self.closed = True
        self._drop_idle()
        closers, self._closers = self._closers, []
        for close in closers:
            try:
                await close()
            except FAILURES as exc:  # closing anyway: nothing to report to
                logger.debug("closing a Redis client failed: %r", exc)

    def error(self, exc: BaseException) -> BackendError:
        """The ``BackendError`` for driver error ``exc`` (raise it ``from exc``)."""
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if len(text) > 400:  # redis-py may list every client it tried; the cause has it all
            text = text[:400] + " ..."
        return BackendError(f"Redis at {self._where()} failed: {type(exc).__name__}: {text}")

    def _where(self) -> str:
        if self._user_client is None:
            return self._redacted_url
        if self.cluster is not None:
            return f"{self.cluster.where()} (redis=)"
        kwargs = self._user_client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')} (redis=)"


def _seconds(options: Mapping[str, object], name: str, default: float) -> float:
    value = options.get(name, default)
    try:
        seconds = float(str(value))
    except ValueError:
        seconds = math.nan
    if isinstance(value, bool) or not 0 < seconds < math.inf:
        raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
    return seconds


def _count(options: Mapping[str, object], name: str, default: int) -> int:
    value = options.get(name, default)
    try:
        count = int(str(value))
    except ValueError:
        count = 0
    if isinstance(value, (bool, float)) or count < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return count


def _policy(reply: Any) -> str:
    """The policy name out of a ``CONFIG GET maxmemory-policy`` reply (list or dict)."""
    if isinstance(reply, (str, bytes)):
        values: list[Any] = [reply]
    else:
        values = list(reply.values()) if isinstance(reply, dict) else list(reply)[1:2]
    value = values[0] if values else b""
    return value.decode() if isinstance(value, bytes) else str(value)


async def _request(conn: Any, packed: bytes | list[bytes]) -> Any:
    """Send one packed command on ``conn`` and read its reply."""
    await conn.send_packed_command(packed, False)
    return await conn.read_response()


def _close(conn: Any) -> None:
    """Close a connection of ours at once (never suspends; redis-py's own quiet close)."""
    conn._close()
