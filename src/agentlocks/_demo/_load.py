"""The load driver: simulated users talking to the replicas over HTTP.

:class:`RoundRobin` is the tiny client-side balancer: each request goes to the next replica,
so one conversation's messages land on different processes (as behind any load balancer).
:func:`drive` plays a :class:`~._scenario.Scenario` and reports each answer as an
:class:`Outcome`; :func:`audit` reads every thread back to see what the conversations kept.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import httpx

from ._scenario import Message, Scenario

__all__ = ["Outcome", "RoundRobin", "Thread", "audit", "drive"]

Kind = Literal["ok", "interrupted", "409", "503", "failed"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request ended.

    Attributes:
        kind: ``ok`` (answered), ``interrupted`` (a newer message stopped its run, on
            ``--strategy interrupt``), ``409`` (thread busy), ``503`` (over capacity) or
            ``failed`` (an error status, an error line, a cut stream).
        thread: The thread it went to.
        message_id: The user message's id.
        answer_id: The id of the answer it streamed back (``ok`` only).
        latency: Seconds from sending to the last byte.
        detail: What failed, for ``failed``.
    """

    kind: Kind
    thread: str
    message_id: str
    answer_id: str | None
    latency: float
    detail: str = ""

    @property
    def promised(self) -> tuple[str, ...]:
        """The message ids the user was told the conversation now holds."""
        if self.kind == "ok" and self.answer_id is not None:
            return (self.message_id, self.answer_id)
        if self.kind == "interrupted":
            return (self.message_id,)  # stopped at a step boundary, its message saved
        return ()


@dataclass(slots=True)
class RoundRobin:
    """Send each request to the next replica in turn."""

    client: httpx.AsyncClient
    bases: list[str]
    _next: itertools.cycle[str] = field(init=False)

    def __post_init__(self) -> None:
        self._next = itertools.cycle(self.bases)

    def base(self) -> str:
        """The replica the next request goes to."""
        return next(self._next)

    async def send(self, thread: str, message_id: str, text: str) -> Outcome:
        """Post one user message and read the streamed run to its end."""
        started = time.monotonic()

        def done(kind: Kind, answer: str | None = None, detail: str = "") -> Outcome:
            return Outcome(kind, thread, message_id, answer, time.monotonic() - started, detail)

        url = f"{self.base()}/threads/{thread}/runs"
        try:
            async with self.client.stream("POST", url, json={"id": message_id, "text": text}) as r:
                if r.status_code in (409, 503):
                    await r.aread()
                    return done("409" if r.status_code == 409 else "503")
                if r.status_code != 200:
                    body = (await r.aread()).decode(errors="replace")
                    return done("failed", detail=f"HTTP {r.status_code}: {body[:200]}")
                answer: str | None = None
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    if "end" in event:
                        if event["end"] == "done":
                            return done("ok", answer)
                        if event["end"] == "interrupted":
                            return done("interrupted")
                        return done("failed", detail=str(event.get("detail", "")))
                    for m in event.get("messages", []):
                        if m["type"] == "ai" and not m.get("tool_calls"):
                            answer = m["id"]
                return done("failed", detail="the stream ended without its last line")
        except httpx.HTTPError as exc:
            return done("failed", detail=f"{type(exc).__name__}: {exc}")


async def drive(
    scenario: Scenario,
    balancer: RoundRobin,
    prefix: str,
    on_outcome: Callable[[Outcome], None],
) -> list[Outcome]:
    """Play ``scenario`` against the replicas; thread ids start with ``prefix``."""
    outcomes: list[Outcome] = []

    async def send(message: Message) -> None:
        outcome = await balancer.send(f"{prefix}-{message.user}", message.id, message.id)
        outcomes.append(outcome)
        on_outcome(outcome)

    async def converse(turns: list[list[Message]]) -> None:
        for turn in turns:
            sends = []
            for message in turn:
                await asyncio.sleep(message.at)
                # A double-text does not wait for the answer to the message before it.
                sends.append(asyncio.create_task(send(message)))
            await asyncio.gather(*sends)

    async def burst() -> None:
        await asyncio.sleep(scenario.burst_at)
        await asyncio.gather(*(send(m) for m in scenario.burst_users()))

    await asyncio.gather(*(converse(t) for t in scenario.conversations().values()), burst())
    return outcomes


@dataclass(frozen=True, slots=True)
class Thread:
    """A conversation as its checkpoint holds it at the end."""

    message_ids: frozenset[str]
    dangling: int


async def audit(balancer: RoundRobin, threads: Iterable[str]) -> dict[str, Thread]:
    """Read every thread back (any replica: they share the checkpointer)."""

    async def one(thread: str) -> tuple[str, Thread]:
        response = await balancer.client.get(f"{balancer.base()}/threads/{thread}")
        response.raise_for_status()
        body = response.json()
        ids = frozenset(m["id"] for m in body["messages"])
        return thread, Thread(ids, len(body["dangling"]))

    return dict(await asyncio.gather(*(one(t) for t in sorted(set(threads)))))


async def forget(balancer: RoundRobin, threads: Iterable[str]) -> None:
    """Delete the threads (a PostgreSQL checkpointer outlives the demo)."""
    await asyncio.gather(
        *(balancer.client.delete(f"{balancer.base()}/threads/{t}") for t in sorted(set(threads)))
    )
