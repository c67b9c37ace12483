"""One demo: start the fleets, play the traffic against each, print the table and verdict."""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

import agentlocks
from agentlocks._url import redact_url

from ._display import Display
from ._load import RoundRobin, audit, drive, forget
from ._replicas import Replica, ReplicaError, start_replicas, stop_replicas
from ._report import LEGEND, Result, verdict
from ._scenario import Scenario
from ._settings import AppSettings, Strategy

__all__ = ["DemoError", "run"]


class DemoError(Exception):
    """The demo cannot run (bad URL, server unreachable, a replica failed); one line."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


_CORRUPTED = (
    "runs failed with LangGraph's INVALID_CHAT_HISTORY: each read its conversation while "
    "another run's tool call had no answer yet, so its model call got an invalid history "
    "(a real provider answers 400)"
)


_WHAT = {
    "unguarded": "the app as many agent backends are written: no lock, no cap",
    "guarded": "the same app with its two agentlocks lines switched on",
}


def _is_postgres(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ("postgres", "postgresql")


def _saver_dsn(url: str) -> str:
    """The PostgreSQL URL without agentlocks' own query options (psycopg would refuse them)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql", query=""))


async def _probe(url: str, namespace: str) -> None:
    """Fail early, in one line, when the URL is bad or its server is unreachable."""
    try:
        coord = agentlocks.connect(url, namespace=namespace)
    except agentlocks.ConfigError as exc:
        raise DemoError(str(exc)) from None  # a bad URL exits 1, like the other commands
    try:
        async with coord:
            await coord.inspect("demo:probe")
    except agentlocks.BackendError as exc:
        raise DemoError(f"cannot reach {redact_url(url)}: {exc}") from None


@contextlib.asynccontextmanager
async def _checkpoints(url: str, workdir: Path) -> AsyncIterator[dict[str, str]]:
    """Label -> saver spec for each run: PostgreSQL when the URL is, else SQLite files."""
    if not _is_postgres(url):
        yield {label: f"sqlite:{workdir / f'{label}.sqlite'}" for label in ("unguarded", "guarded")}
        return
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    dsn = _saver_dsn(url)
    try:
        # Create the tables once, here: replicas racing on CREATE TABLE could fail.
        async with AsyncPostgresSaver.from_conn_string(dsn) as saver:
            await saver.setup()
    except Exception as exc:
        raise DemoError(f"cannot set up the checkpoint tables: {type(exc).__name__}") from None
    yield {"unguarded": dsn, "guarded": dsn}


async def run(
    display: Display, url: str, replicas: int, strategy: Strategy, scenario: Scenario
) -> int:
    """Run the demo; return the exit status."""
    tag = secrets.token_hex(3)
    namespace = f"agentlocks-demo-{tag}"
    await _probe(url, namespace)
    shared_memory = urlsplit(url).scheme.lower() == "memory" and replicas > 1
    _intro(display, url, replicas, strategy, scenario, shared_memory)
    with tempfile.TemporaryDirectory(prefix="agentlocks-demo-") as tmp:
        workdir = Path(tmp)
        async with _checkpoints(url, workdir) as savers:
            fleets = {
                label: (
                    _settings(label, url, namespace, savers[label], strategy, scenario),
                    replicas,
                )
                for label in ("unguarded", "guarded")
            }
            started = time.monotonic()
            try:
                running = await start_replicas(fleets, workdir)
            except ReplicaError as exc:
                raise DemoError(str(exc)) from None
            display.say(f"  {2 * replicas} servers up in {time.monotonic() - started:.1f} s")
            try:
                results = [
                    await _play(display, label, running[label], scenario, tag)
                    for label in ("unguarded", "guarded")
                ]
            finally:
                await stop_replicas([r for fleet in running.values() for r in fleet])
    display.say()
    display.table(results)
    unguarded, guarded = results
    for result in results:
        if result.corrupted:
            display.note("failed", f"{result.label}: {result.corrupted} {_CORRUPTED}")
        for detail in result.failures:
            display.note("failed", f"{result.label}: {detail}")
    display.say()
    display.note("columns", LEGEND)
    display.say()
    display.verdict(verdict(unguarded, guarded, shared_memory=shared_memory), guarded.clean)
    return 0 if guarded.clean else 1


def _settings(
    label: str, url: str, namespace: str, saver: str, strategy: Strategy, scenario: Scenario
) -> AppSettings:
    return AppSettings(
        guarded=label == "guarded",
        url=url,
        namespace=namespace,
        saver=saver,
        strategy=strategy,
        capacity=scenario.capacity,
        timeout=scenario.timeout,
        think=scenario.think,
        tool_delay=scenario.tool_delay,
    )


def _intro(
    display: Display,
    url: str,
    replicas: int,
    strategy: Strategy,
    scenario: Scenario,
    shared_memory: bool,
) -> None:
    saver = "AsyncPostgresSaver" if _is_postgres(url) else "AsyncSqliteSaver file"
    s = scenario
    display.say("agentlocks demo: a FastAPI + LangGraph agent under uvicorn, driven over HTTP")
    display.say(
        f"  agent    model -> lookup tool -> model, {s.think * 1000:.0f} ms per model call, "
        f"{s.tool_delay * 1000:.0f} ms per tool call (scripted, no LLM)"
    )
    display.say(
        f"  servers  {replicas} uvicorn replica(s) per run, round-robin; locks on "
        f"{redact_url(url)}; checkpoints in a shared {saver}"
    )
    display.say(
        f"  traffic  {s.users} users x {s.turns} turns, {s.double_texters} of them double-texting,"
        f" a burst of {s.burst} at {s.burst_at:g} s ({s.planned} requests per run)"
    )
    display.say(
        f"  guarded  guard_checkpointer + guard_graph(on_busy={strategy!r}, "
        f"max_concurrent_runs={s.capacity}, timeout={s.timeout:g})"
    )
    if shared_memory:
        display.note(
            "note",
            f"memory:// locks live inside one process: {replicas} replicas are {replicas} "
            "separate lock tables, so the guarded run cannot protect a conversation whose "
            "messages reach different replicas. Expect it to lose messages too; use "
            "--url redis://... or --url postgresql://...",
        )


async def _play(
    display: Display, label: str, fleet: list[Replica], scenario: Scenario, tag: str
) -> Result:
    prefix = f"demo-{tag}-{label}"
    display.say(f"  {label:<9}  {_WHAT[label]}")
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        balancer = RoundRobin(client, [r.base_url for r in fleet])
        with display.progress(label, scenario.planned) as update:
            started = time.monotonic()
            outcomes = await drive(scenario, balancer, prefix, update)
            seconds = time.monotonic() - started
        try:
            threads = await audit(balancer, (o.thread for o in outcomes))
            await forget(balancer, threads)
        except httpx.HTTPError as exc:
            raise DemoError(f"could not read the conversations back: {exc!r}") from None
    return Result.of(label, outcomes, threads, seconds)
