"""Start and stop the demo's server processes (one per replica).

Each replica is ``python -m agentlocks._demo._serve`` with its settings in the environment.
It reports the port it bound on stdout; its logs go to a file in the run's directory, shown
when it fails to start. A replica whose driver dies stops by itself (its stdin closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ._settings import AppSettings

__all__ = ["Replica", "ReplicaError", "start_replicas", "stop_replicas"]

START_TIMEOUT = 60.0
"""Seconds a replica may take to import LangGraph, open its saver and answer /health."""


class ReplicaError(RuntimeError):
    """A replica did not start; the message ends with the tail of its log."""


@dataclass(slots=True)
class Replica:
    """One running server process."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    port: int = 0
    base_url: str = field(default="")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


async def _start(name: str, settings: AppSettings, workdir: Path) -> Replica:
    log = workdir / f"{name}.log"
    env = {**os.environ, **settings.to_env()}
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agentlocks._demo._serve",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=sink,
            env=env,
        )
    replica = Replica(name, process, log)
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
    except TimeoutError:
        line = b""
    if not line.startswith(b"listening "):
        await _stop(replica)
        raise ReplicaError(f"replica {name} did not start; its log says:\n{_tail(log)}")
    replica.port = int(line.split()[1])
    replica.base_url = f"http://127.0.0.1:{replica.port}"
    return replica


async def _healthy(replica: Replica, client: httpx.AsyncClient) -> None:
    """Wait until ``replica`` answers /health (its lifespan has opened saver and backend)."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    while True:
        if replica.process.returncode is not None:
            raise ReplicaError(
                f"replica {replica.name} exited; its log says:\n{_tail(replica.log)}"
            )
        try:
            response = await client.get(f"{replica.base_url}/health", timeout=5)
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise ReplicaError(
                f"replica {replica.name} never became healthy:\n{_tail(replica.log)}"
            )
        await asyncio.sleep(0.1)


async def start_replicas(
    fleets: dict[str, tuple[AppSettings, int]], workdir: Path
) -> dict[str, list[Replica]]:
    """Start every fleet's replicas at once (imports run in parallel); wait until healthy.

    Args:
        fleets: Label -> (settings, number of replicas).
        workdir: Where the replicas' logs go.

    Raises:
        ReplicaError: One did not start (all started ones are stopped again).
    """
    names = [(label, f"{label}-{i + 1}") for label, (_, n) in fleets.items() for i in range(n)]
    results = await asyncio.gather(
        *(_start(name, fleets[label][0], workdir) for label, name in names),
        return_exceptions=True,
    )
    started = [r for r in results if isinstance(r, Replica)]
    failed = [r for r in results if isinstance(r, BaseException)]
    try:
        if failed:
            raise failed[0]
        async with httpx.AsyncClient() as client:
            await asyncio.gather(*(_healthy(r, client) for r in started))
    except BaseException:
        await stop_replicas(started)
        raise
    out: dict[str, list[Replica]] = {label: [] for label in fleets}
    for (label, _), replica in zip(names, results, strict=True):
        assert isinstance(replica, Replica)
        out[label].append(replica)
    return out


async def _stop(replica: Replica) -> None:
    process = replica.process
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 8)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.stdin is not None:
        process.stdin.close()


async def stop_replicas(replicas: list[Replica]) -> None:
    """Stop ``replicas`` (SIGTERM, then SIGKILL after a grace period)."""
    await asyncio.gather(*(_stop(r) for r in replicas))
