"""Benchmark scenarios and raw floors, shared by ``agentlocks bench`` and ``benchmarks/``.

The adapters (the raw floors and agentlocks itself) live in ``_bench_adapters.py`` and are
re-exported here.

Scenarios (each returns a dict of figures; times in µs):

* :func:`uncontended`: one task, one key, ``n`` sequential acquire+release, repeated and
  interleaved across adapters (the machine drifts; compare within a round).
* :func:`handoff`: ``waiters`` tasks loop acquire -> hold -> release on one key; latency
  from a ``release()`` call to the next ``acquire()`` return, self-reacquire share, grants
  per task.
* :func:`manykeys`: ``tasks`` concurrent tasks over ``keys`` random keys.
* :func:`fairness`: a holder, then ``waiters`` queued a known order apart; FIFO
  violations and the queued hand-off latency.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ._bench_adapters import (
    ALL_SCENARIOS,
    RUN_ID,
    Adapter,
    AgentlocksAdapter,
    AsyncioLockFloor,
    PgAdvisoryFloor,
    PgSelect1Floor,
    RedisPingFloor,
    RedisSetNxFloor,
)

__all__ = [
    "ALL_SCENARIOS",
    "QUICK",
    "RUN_ID",
    "Adapter",
    "AgentlocksAdapter",
    "AsyncioLockFloor",
    "PgAdvisoryFloor",
    "PgSelect1Floor",
    "RedisPingFloor",
    "RedisSetNxFloor",
    "Settings",
    "fairness",
    "handoff",
    "kname",
    "manykeys",
    "pct",
    "run_scenario",
    "uncontended",
]

perf = time.perf_counter


@dataclass(frozen=True, slots=True)
class Settings:
    """The counts of one run; the defaults are those the published figures used."""

    n: int = 2000
    repeats: int = 3
    waiters: int = 8
    holds: tuple[float, ...] = (0.0, 1.0)  # ms
    handoffs: int = 300
    handoff_cap: float = 15.0
    mk_tasks: int = 64
    mk_keys: int = 1000
    mk_total: int = 5000
    mk_cap: float = 60.0
    fair_trials: int = 5
    fair_stagger: float = 20.0  # ms
    fair_hold: float = 2.0  # ms


QUICK: Final = Settings(
    n=200, repeats=1, handoffs=60, handoff_cap=3.0, mk_tasks=16, mk_keys=100, mk_total=500,
    mk_cap=5.0, fair_trials=1, fair_stagger=5.0,
)  # fmt: skip


# -- helpers -----------------------------------------------------------------------------------


def pct(xs: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of ``xs`` (linear interpolation), NaN when empty."""
    if not xs:
        return float("nan")
    ordered = sorted(xs)
    k = (len(ordered) - 1) * p / 100.0
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def kname(scenario: str, part: object) -> str:
    """A key unique to this run, scenario and part."""
    return f"{RUN_ID}:{scenario}:{part}"


# -- scenarios ---------------------------------------------------------------------------------


async def _uncontended_batch(a: Adapter, n: int, lat: list[float]) -> float:
    key = kname("u", a.name)
    started = perf()
    for _ in range(n):
        t = perf()
        await a.release(await a.acquire(key))
        lat.append(perf() - t)
    return n / (perf() - started)


async def uncontended(adapters: Sequence[Adapter], n: int, repeats: int) -> dict[str, Any]:
    """Sequential acquire+release of one key; repeats interleaved across ``adapters``."""
    rates: dict[str, list[float]] = {a.name: [] for a in adapters}
    lats: dict[str, list[float]] = {a.name: [] for a in adapters}
    for a in adapters:  # warm-up: connections, script cache, prepared statements
        await _uncontended_batch(a, min(200, n), [])
    for _ in range(repeats):
        for a in adapters:
            rates[a.name].append(await _uncontended_batch(a, n, lats[a.name]))
    out: dict[str, Any] = {}
    for a in adapters:
        median = statistics.median(rates[a.name])
        out[a.name] = {
            "ops_s": median, "us_per_op": 1e6 / median, "ops_s_repeats": rates[a.name],
            "p50_us": pct(lats[a.name], 50) * 1e6, "p99_us": pct(lats[a.name], 99) * 1e6,
        }  # fmt: skip
    return out


async def handoff(
    a: Adapter, waiters: int, hold_s: float, target: int, cap_s: float
) -> dict[str, Any]:
    """``waiters`` tasks loop on one key; hand-off latency from release() to next acquire."""
    key = kname("h", f"{a.name}:{hold_s}")
    events: list[tuple[float, int, float, float]] = []  # (acquired, task, release call, return)
    stop = asyncio.Event()  # set by one worker, read by all
    deadline = perf() + cap_s

    async def worker(i: int) -> None:
        while not stop.is_set():
            handle = await a.acquire(key)
            acquired = perf()
            if stop.is_set():
                await a.release(handle)
                return
            # A 0 ms hold still yields once: an in-process lock would otherwise let one
            # task loop without ever letting the waiters run.
            await asyncio.sleep(hold_s)
            called = perf()
            await a.release(handle)
            events.append((acquired, i, called, perf()))
            if len(events) > target or perf() > deadline:
                stop.set()

    started = perf()
    tasks = [asyncio.create_task(worker(i)) for i in range(waiters)]
    done, pending = await asyncio.wait(tasks, timeout=cap_s + 30)
    for t in pending:
        t.cancel()
    for t in done:
        if (exc := t.exception()) is not None:
            raise exc
    events.sort()
    gaps, from_return, cross = [], [], []
    self_re = overlap = 0
    for prev, cur in itertools.pairwise(events):
        gap = cur[0] - prev[2]
        overlap += gap < 0  # granted before the previous holder even called release()
        gaps.append(gap)
        from_return.append(cur[0] - prev[3])
        if cur[1] == prev[1]:
            self_re += 1
        else:
            cross.append(gap)
    span = events[-1][3] - events[0][0] if len(events) > 1 else float("nan")
    return {
        "handoffs": len(gaps), "elapsed_s": perf() - started, "capped": perf() > deadline,
        "ops_s": len(events) / span,
        "p50_us": pct(gaps, 50) * 1e6, "p90_us": pct(gaps, 90) * 1e6,
        "p99_us": pct(gaps, 99) * 1e6,
        "p50_from_release_return_us": pct(from_return, 50) * 1e6,
        "cross_p50_us": pct(cross, 50) * 1e6, "cross_p99_us": pct(cross, 99) * 1e6,
        "self_reacquire_frac": self_re / max(1, len(gaps)),
        "overlap_violations": overlap,
        "grants_per_worker": [sum(1 for e in events if e[1] == i) for i in range(waiters)],
        "samples_us": [g * 1e6 for g in cross],
    }  # fmt: skip


async def manykeys(a: Adapter, tasks: int, keys: int, total: int, cap_s: float) -> dict[str, Any]:
    """``tasks`` concurrent tasks acquire+release random keys among ``keys``."""
    rng = random.Random(1234)
    names = [kname("m", f"{a.name}:{i}") for i in range(keys)]
    issued = done = 0
    lat: list[float] = []
    deadline = perf() + cap_s

    async def worker() -> None:
        nonlocal issued, done
        while issued < total and perf() < deadline:
            issued += 1
            key = names[rng.randrange(keys)]
            t = perf()
            await a.release(await a.acquire(key))
            lat.append(perf() - t)
            done += 1

    started = perf()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(tasks))), cap_s + 60)
    elapsed = perf() - started
    return {
        "ops": done, "elapsed_s": elapsed, "ops_s": done / elapsed,
        "p50_us": pct(lat, 50) * 1e6, "p99_us": pct(lat, 99) * 1e6,
    }  # fmt: skip


async def fairness(
    a: Adapter, waiters: int, trials: int, stagger_s: float, hold_s: float
) -> dict[str, Any]:
    """A holder; ``waiters`` arrive ``stagger_s`` apart; each takes the key once, in order?"""
    orders: list[str] = []
    violations = grants = 0
    gaps: list[float] = []
    for trial in range(trials):
        key = kname("f", f"{a.name}:{trial}")
        first = await a.acquire(key)
        order: list[int] = []
        marks: list[tuple[float, float]] = []  # (acquired, release called)

        async def waiter(
            i: int, key: str = key, order: list[int] = order, marks: list[Any] = marks
        ) -> None:
            handle = await a.acquire(key)
            acquired = perf()
            order.append(i)
            await asyncio.sleep(hold_s)
            marks.append((acquired, perf()))
            await a.release(handle)

        tasks = []
        for i in range(waiters):
            tasks.append(asyncio.create_task(waiter(i)))
            await asyncio.sleep(stagger_s)
        previous = perf()
        await a.release(first)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        for acquired, called in sorted(marks):
            gaps.append(acquired - previous)
            previous = called
        remaining = list(range(waiters))
        for granted in order:
            violations += granted != remaining[0]
            remaining.remove(granted)
            grants += 1
        orders.append("".join(map(str, order)))
    return {
        "violations": violations, "grants": grants, "orders": orders,
        "queued_handoff_p50_us": pct(gaps, 50) * 1e6,
        "queued_handoff_p90_us": pct(gaps, 90) * 1e6,
        "queued_handoff_max_us": max(gaps) * 1e6, "queued_handoff_n": len(gaps),
    }  # fmt: skip


async def run_scenario(a: Adapter, scenario: str, s: Any) -> dict[str, Any]:
    """Run one contended scenario with the counts of ``s`` (a :class:`Settings` or alike).

    Each first runs a short untimed copy of itself, so lazily grown pools are full size.
    """
    if scenario == "handoff":
        await handoff(a, s.waiters, 0.0, 4 * s.waiters, s.handoff_cap)
        return {
            f"hold{hold:g}ms": await handoff(a, s.waiters, hold / 1e3, s.handoffs, s.handoff_cap)
            for hold in s.holds
        }
    if scenario == "manykeys":
        await manykeys(a, s.mk_tasks, s.mk_keys, 4 * s.mk_tasks, s.mk_cap)
        return await manykeys(a, s.mk_tasks, s.mk_keys, s.mk_total, s.mk_cap)
    if scenario == "fairness":
        return await fairness(a, s.waiters, s.fair_trials, s.fair_stagger / 1e3, s.fair_hold / 1e3)
    raise ValueError(f"unknown scenario {scenario!r}")
