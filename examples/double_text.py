"""The "double text" problem of agent backends, shown live on ``memory://``.

A user sends two messages to one conversation before the first answer arrives. Each message
starts an agent run that reads the conversation's checkpoint, waits for a (fake) LLM, and
writes the checkpoint back. Without a lock the second write silently replaces the first.

Run it with ``scripts/demo`` (or ``python examples/double_text.py`` inside ``.venv``).
It exits non-zero if the locked runs ever lose an update, so it doubles as a check.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from contextlib import AbstractAsyncContextManager, nullcontext

import agentlocks

LLM_SECONDS = 0.2  # how long the fake model "thinks"
START = time.monotonic()


def say(text: str) -> None:
    """Print one line, stamped with the seconds since the demo started."""
    print(f"  [{time.monotonic() - START:4.2f}s] {text}")


class Checkpoints:
    """A stand-in for a checkpoint store: thread id -> list of messages.

    Like a real store that honours fencing tokens, it refuses a write whose token is not
    greater than the last one it accepted for that thread.
    """

    def __init__(self) -> None:
        self.messages: dict[str, list[str]] = {}
        self.last_token: dict[str, int] = {}

    def read(self, thread_id: str) -> list[str]:
        return list(self.messages.get(thread_id, []))

    def write(self, thread_id: str, messages: list[str], token: int | None = None) -> None:
        if token is not None:
            if token <= self.last_token.get(thread_id, 0):
                raise RuntimeError(f"stale write refused (token {token})")
            self.last_token[thread_id] = token
        self.messages[thread_id] = messages


async def fake_llm(prompt: str) -> str:
    await asyncio.sleep(LLM_SECONDS)
    return f"reply to {prompt!r}"


async def agent_run(
    store: Checkpoints,
    thread_id: str,
    text: str,
    lock: AbstractAsyncContextManager[agentlocks.Lease | None],
) -> None:
    """One agent run: read the checkpoint, call the model, write the checkpoint back."""
    async with lock as lease:
        fence = "" if lease is None else f" with token {lease.token}"
        history = store.read(thread_id)
        say(f"run {text!r:8} reads {len(history)} messages{fence}")
        reply = await fake_llm(text)
        store.write(thread_id, [*history, text, reply], None if lease is None else lease.token)
        say(f"run {text!r:8} writes {len(history) + 2} messages")


async def double_text(coord: agentlocks.Coordinator | None) -> int:
    """Two messages on one thread at once; return how many messages were lost."""
    store, thread_id = Checkpoints(), "t1"

    def lock() -> AbstractAsyncContextManager[agentlocks.Lease | None]:
        return nullcontext() if coord is None else coord.acquire(f"thread:{thread_id}")

    await asyncio.gather(
        agent_run(store, thread_id, "hi", lock()),
        agent_run(store, thread_id, "hello?", lock()),
    )
    kept = store.read(thread_id)
    gone = [m for m in ("hi", "hello?") if m not in kept]
    status = f"LOST UPDATE: {', '.join(map(repr, gone))} vanished" if gone else "nothing lost"
    say(f"checkpoint has {len(kept)} of 4 messages: {status}")
    return 4 - len(kept)


async def llm_call(coord: agentlocks.Coordinator, user: str, per_user: bool) -> float:
    """One user's request: an LLM call under a global cap; return the seconds it waited."""
    started = time.monotonic()
    # The per-user slot is taken BEFORE the global one: one user's queue holds no global slot.
    user_slot = coord.semaphore(f"user:{user}", capacity=2) if per_user else nullcontext()
    async with user_slot, coord.semaphore("llm-calls", capacity=3):
        waited = time.monotonic() - started
        await asyncio.sleep(LLM_SECONDS)
    return waited


async def fairness(coord: agentlocks.Coordinator, per_user: bool) -> float:
    """Alice sends 6 requests, then Bob sends 1; return how long Bob waited."""
    alice = [asyncio.create_task(llm_call(coord, "alice", per_user)) for _ in range(6)]
    await asyncio.sleep(0.01)  # Bob arrives just after Alice's burst
    bob = await llm_call(coord, "bob", per_user)
    await asyncio.gather(*alice)
    return bob


async def fail_fast(coord: agentlocks.Coordinator) -> int:
    """Eight requests hit a cap of 3 with max_waiting=2; return how many were rejected."""

    async def request(n: int) -> None:
        try:
            async with coord.semaphore("llm-calls", capacity=3, max_waiting=2, timeout=5):
                await asyncio.sleep(LLM_SECONDS)
            say(f"#{n}: served")
        except agentlocks.QueueFull as exc:
            header = max(1, math.ceil(exc.retry_after))  # what a 503 would carry
            say(f"#{n}: QueueFull (retry_after={exc.retry_after:g}s) -> 503, Retry-After: {header}")
            raise

    results = await asyncio.gather(*(request(n) for n in range(1, 9)), return_exceptions=True)
    return sum(isinstance(r, agentlocks.QueueFull) for r in results)


async def main() -> int:
    print("1. Two runs on one thread, no lock: both read, both write, one write wins.")
    await double_text(None)

    async with agentlocks.connect("memory://") as coord:
        print('2. The same with `async with coord.acquire(f"thread:{thread_id}")`:')
        lost = await double_text(coord)

        print("3. Alice floods a cap of 3 LLM calls; Bob sends one request.")
        shared_wait = await fairness(coord, per_user=False)
        say(f"global cap only:          Bob waited {shared_wait:.2f}s behind Alice")
        fair_wait = await fairness(coord, per_user=True)
        say(f"plus 2 slots per user:    Bob waited {fair_wait:.2f}s")

        print("4. Fail fast: 8 requests, capacity 3, max_waiting=2.")
        rejected = await fail_fast(coord)

        idle = await coord.inspect("llm-calls", semaphore=True)
        print(f"Afterwards: {len(idle.holders)} holders, {idle.waiting} waiting.")

    problems = []
    if lost:
        problems.append(f"the locked runs lost {lost} messages")
    if fair_wait >= LLM_SECONDS / 2:
        problems.append(f"Bob waited {fair_wait:.2f}s despite the per-user cap")
    if rejected != 3:
        problems.append(f"expected 3 rejections, got {rejected}")
    if idle.holders or idle.waiting:
        problems.append("something was left held or queued")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    if not problems:
        print("OK: with the lock nothing was lost, Bob was served at once, overload failed fast.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
