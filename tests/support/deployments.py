"""Throwaway multi-node Redis deployments on loopback: a Redis Cluster and a Sentinel group.

Built from the Debian ``redis-server`` / ``redis-cli`` binaries (no Docker), in a temp dir,
on free loopback ports; nothing is persisted. Used by the session-scoped fixtures of
``tests/conftest.py`` (one deployment per test session for the conformance suite) and by
the failover tests, which start their own and break them.

* :class:`ClusterDeployment`: ``masters`` masters (3) with ``replicas`` replicas each,
  made into one cluster by ``redis-cli --cluster create``; a short ``cluster-node-timeout``
  so a killed master's replica takes over within about two seconds.
* :class:`SentinelDeployment`: one primary, ``replicas`` replicas and three sentinels
  (quorum 2) watching service ``mymaster`` with a one-second down-after time.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.servers import free_port

__all__ = [
    "ClusterDeployment",
    "DeploymentError",
    "Node",
    "SentinelDeployment",
    "admin_client",
    "redis_binaries",
]

SERVICE = "mymaster"


class DeploymentError(RuntimeError):
    """A deployment could not be started (binary missing, node not answering, ...)."""


def redis_binaries() -> tuple[str, str]:
    """``(redis-server, redis-cli)`` paths: the rig's server, else PATH, else /usr/bin."""
    server = os.environ.get("AGENTLOCKS_TEST_REDIS_SERVER") or shutil.which("redis-server")
    server = server or "/usr/bin/redis-server"
    cli = shutil.which("redis-cli", path=str(Path(server).parent)) or shutil.which("redis-cli")
    if not Path(server).exists() or cli is None:
        raise DeploymentError(f"need redis-server and redis-cli (looked for {server})")
    return server, cli


def _free_port() -> int:
    # At most 55535: a cluster node also listens on its port + 10000 (the cluster bus).
    return free_port(highest=55535)


def command(port: int, *words: str, timeout: float = 2.0) -> str:
    """Send one inline command to ``127.0.0.1:port``; return the raw reply text."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall((" ".join(words) + "\r\n").encode())
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if _complete(data):
                break
        return data.decode(errors="replace")


def _complete(data: bytes) -> bool:
    if data[:1] in (b"+", b"-", b":"):
        return data.endswith(b"\r\n")
    if data[:1] == b"$":
        head, _, rest = data.partition(b"\r\n")
        size = int(head[1:])
        return size < 0 or len(rest) >= size + 2
    return data.endswith(b"\r\n")  # arrays: good enough for PING/INFO-like use here


@dataclass
class Node:
    """One redis-server process (a cluster node, a primary, a replica or a sentinel)."""

    port: int
    args: list[str]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, binary: str) -> None:
        """Start it; return at once (see :meth:`wait_ready`)."""
        log = open(self.workdir / f"{self.port}.log", "ab")  # noqa: SIM115 (owned by the child)
        self.process = subprocess.Popen(
            [binary, *self.args], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        log.close()

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until it answers PING."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            with contextlib.suppress(OSError, ValueError):
                if command(self.port, "PING", timeout=0.5).startswith("+PONG"):
                    return
            time.sleep(0.02)
        raise DeploymentError(f"redis node on port {self.port} did not start: {self.log_tail()}")

    def log_tail(self) -> str:
        """The last lines of its log."""
        path = self.workdir / f"{self.port}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return " | ".join(lines[-5:])

    @property
    def alive(self) -> bool:
        """True while its process runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL it (a crash: nothing is flushed, connections reset)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(10)
            self.process = None


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child only calls it


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the test process dies (no orphans, even on SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux; elsewhere a no-op)


def _server_args(port: int, *extra: str) -> list[str]:
    # repl-diskless-sync-delay 0: a replica syncs at once (the default waits 5 s for more).
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--repl-diskless-sync-delay", "0", *extra]  # fmt: skip


@dataclass
class ClusterDeployment:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each."""

    workdir: Path
    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = 1000
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming one start-up node (one is enough)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> ClusterDeployment:
        """Start every node, create the cluster, wait until every node says it is ok."""
        server, cli = redis_binaries()
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                port = _free_port()
                args = _server_args(
                    port, "--cluster-enabled", "yes", "--cluster-config-file",
                    f"nodes-{port}.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--cluster-replica-validity-factor", "0",
                )  # fmt: skip
                node = Node(port, args, self.workdir)
                node.start(server)
                self.nodes.append(node)
            for node in self.nodes:
                node.wait_ready()
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            done = subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas",
                 str(self.replicas), "--cluster-yes"],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise DeploymentError(f"redis-cli --cluster create failed: {done.stdout[-500:]!r}")
            self.wait_ok()
            if self.replicas:
                self.wait_replicated()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node reports ``cluster_state:ok`` and agrees on the slots."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                infos = [command(n.port, "CLUSTER", "INFO") for n in self.nodes if n.alive]
                ok = ("cluster_state:ok", "cluster_slots_ok:16384")
                if all(word in info for info in infos for word in ok):
                    return
            time.sleep(0.05)
        raise DeploymentError("the cluster did not become ok")

    def wait_promoted(self, timeout: float = 30.0) -> None:
        """After a master was killed: wait until a replica took its place and all is ok."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if len(self.master_ports()) == self.masters:
                    self.wait_ok(max(0.1, deadline - time.monotonic()))
                    return
            time.sleep(0.05)
        raise DeploymentError("no replica took the dead master's place")

    @property
    def server_binary(self) -> str:
        """The redis-server binary the nodes run."""
        return redis_binaries()[0]

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until every live master has a replica whose link is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                infos = [_info(p) for p in self.master_ports()]
                if all("connected_slaves:0" not in i and "state=online" in i for i in infos):
                    return
            time.sleep(0.05)
        raise DeploymentError("a master has no replica online")

    def master_ports(self) -> list[int]:
        """The ports of the nodes that are masters now."""
        return [n.port for n in self.nodes if n.alive and _role(n.port) == "master"]

    def stop(self) -> None:
        """Kill every node."""
        for node in self.nodes:
            node.kill()


@dataclass
class SentinelDeployment:
    """A primary with ``replicas`` replicas, watched by three sentinels (quorum 2)."""

    workdir: Path
    replicas: int = 1
    down_after_ms: int = 1000
    #: Wait until the sentinels know the replicas and each other (~2-7 s): failover needs it.
    failover_ready: bool = True
    primary: Node | None = None
    replica_nodes: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis+sentinel://`` naming every sentinel and the service."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    @property
    def data_nodes(self) -> list[Node]:
        """The primary and the replicas (whatever their role is now)."""
        return [n for n in (self.primary, *self.replica_nodes) if n is not None]

    def start(self) -> SentinelDeployment:
        """Start the primary, the replicas and the sentinels; wait until all are linked."""
        server, _ = redis_binaries()
        try:
            port = _free_port()
            self.primary = Node(port, _server_args(port), self.workdir)
            self.primary.start(server)
            self.primary.wait_ready()
            for _ in range(self.replicas):
                rport = _free_port()
                replica = Node(
                    rport, _server_args(rport, "--replicaof", "127.0.0.1", str(port)), self.workdir
                )
                replica.start(server)
                self.replica_nodes.append(replica)
            for replica in self.replica_nodes:
                replica.wait_ready()
                self._wait(lambda r=replica: "master_link_status:up" in _info(r.port))
            for _ in range(3):
                sport = _free_port()
                conf = self.workdir / f"sentinel-{sport}.conf"
                conf.write_text(
                    f"port {sport}\nbind 127.0.0.1\nprotected-mode no\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {port} 2\n"
                    f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {SERVICE} 5000\n"
                    f"sentinel parallel-syncs {SERVICE} 1\n"
                )
                sentinel = Node(sport, [str(conf), "--sentinel"], self.workdir)
                sentinel.start(server)
                self.sentinels.append(sentinel)
            for sentinel in self.sentinels:
                sentinel.wait_ready()
            # Every sentinel knows the replicas and the other sentinels: failover can start.
            self._wait(lambda: all(self._linked(s.port) for s in self.sentinels))
        except BaseException:
            self.stop()
            raise
        return self

    def _linked(self, port: int) -> bool:
        reply = command(port, "SENTINEL", "MASTER", SERVICE)
        words = [w for w in reply.split("\r\n") if w and w[0] not in "*$"]
        info = dict(zip(words[::2], words[1::2], strict=False))
        if not self.failover_ready:
            return "ip" in info  # it names the primary: enough for clients
        others = int(info.get("num-other-sentinels", 0))
        return int(info.get("num-slaves", 0)) >= self.replicas and others >= len(self.sentinels) - 1

    def primary_port(self) -> int:
        """The port the sentinels name as primary now."""
        reply = command(self.sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int([w for w in reply.split("\r\n") if w and w[0] not in "*$"][1])

    def node(self, port: int) -> Node:
        """The data node listening on ``port``."""
        return next(n for n in self.data_nodes if n.port == port)

    @staticmethod
    def _wait(ready: object, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if ready():  # type: ignore[operator]
                    return
            time.sleep(0.05)
        raise DeploymentError("the sentinel deployment did not settle")

    def stop(self) -> None:
        """Kill every process."""
        for node in (*self.sentinels, *self.data_nodes):
            node.kill()


def _info(port: int) -> str:
    return command(port, "INFO", "replication")


def _role(port: int) -> str:
    for line in _info(port).splitlines():
        if line.startswith("role:"):
            return line.partition(":")[2].strip()
    return "?"


def admin_client(url: str) -> Any:
    """A plain redis-py client on the primary(ies) behind ``url``: to look at or break keys.

    ``redis://`` gives a ``Redis``, ``redis+cluster://`` a ``RedisCluster``,
    ``redis+sentinel://`` a ``Redis`` on the current primary. Close it with ``aclose()``.
    """
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    base = url.partition("?")[0]
    scheme, _, rest = base.partition("://")
    hosts, _, path = rest.partition("/")
    if scheme.endswith("+cluster"):
        host, _, port = hosts.split(",")[0].rpartition(":")
        return RedisCluster(host=host, port=int(port))
    if scheme.endswith("+sentinel"):
        first = hosts.split(",")[0].rpartition(":")
        reply = command(int(first[2]), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", path.split("/")[0])
        words = [w for w in reply.split("\r\n") if w and w[0] not in "*$"]
        return aioredis.Redis(host=words[0], port=int(words[1]))
    return aioredis.Redis.from_url(base)
