"""Interleaved A/B of agentlocks ``redis://`` across source trees (other checkouts, commits).

Each round runs one short child process per tree, in a rotating order, against one
throwaway ``redis-server``; a child imports agentlocks from its tree's ``src`` (via
``PYTHONPATH``) and measures, in that order: the uncontended acquire+release beside the raw
``SET NX PX`` + compare-and-delete floor (alternating batches), the PING p50, and the queued
hand-off of the fairness scenario (waiters queued ``--stagger`` ms apart behind a holder).
Figures are medians over rounds of per-round values; ``x base`` is the median of per-round
ratios to the first tree. The machine is shared and noisy: many short rounds, adjacent
processes, ratios within a round.

Usage (from the repository root)::

    .venv/bin/python benchmarks/_redis_ab.py base=../redis-base now=. --rounds 15

A tree is ``name=path`` (a checkout whose ``src`` holds agentlocks). Prints markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

perf = time.perf_counter

_CAD = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


# --------------------------------------------------------------------------- child
async def _child(url: str, n: int, repeats: int, waiters: int, trials: int, stagger: float) -> Any:
    import redis.asyncio as aioredis

    import agentlocks

    r = aioredis.Redis.from_url(url)
    cad = r.register_script(_CAD)
    coord = agentlocks.connect(url, namespace=f"ab-{uuid.uuid4().hex[:8]}")

    async def floor_batch(count: int) -> float:
        t0 = perf()
        for _ in range(count):
            token = uuid.uuid4().hex
            await r.set("ab-floor", token, nx=True, px=30000)
            await cad(keys=["ab-floor"], args=[token])
        return (perf() - t0) / count * 1e6

    async def ours_batch(count: int) -> float:
        t0 = perf()
        for _ in range(count):
            lease = await coord.acquire("ab-u")
            await lease.release()
        return (perf() - t0) / count * 1e6

    await floor_batch(200)
    await ours_batch(200)
    floors, ours = [], []
    for _ in range(repeats):
        floors.append(await floor_batch(n))
        ours.append(await ours_batch(n))

    pings = []
    for _ in range(200):
        t = perf()
        await r.ping()
        pings.append(perf() - t)
    ping = statistics.median(pings) * 1e6

    gaps: list[float] = []
    violations = 0
    for trial in range(trials):
        key = f"ab-f:{trial}"
        first = await coord.acquire(key)
        marks: list[tuple[float, float]] = []
        order: list[int] = []

        async def waiter(i: int, key: str = key, marks: Any = marks, order: Any = order) -> None:
            lease = await coord.acquire(key)
            got = perf()
            order.append(i)
            await asyncio.sleep(0.002)
            marks.append((got, perf()))
            await lease.release()

        tasks = []
        for i in range(waiters):
            tasks.append(asyncio.create_task(waiter(i)))
            await asyncio.sleep(stagger / 1e3)
        previous = perf()
        await first.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        for got, called in sorted(marks):
            gaps.append(got - previous)
            previous = called
        violations += sum(a != b for a, b in zip(order, range(waiters), strict=True))
    await coord.aclose()
    await r.aclose()
    return {
        "floor_us": statistics.median(floors),
        "ours_us": statistics.median(ours),
        "x_floor": statistics.median(o / f for o, f in zip(ours, floors, strict=True)),
        "ping_us": ping,
        "qh_p50_us": statistics.median(gaps) * 1e6,
        "qh_rtts": statistics.median(gaps) * 1e6 / ping,
        "violations": violations,
    }


# --------------------------------------------------------------------------- parent
def _run_child(tree: Path, url: str, ns: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    args = [sys.executable, __file__, "--child", url, "--n", str(ns.n), "--repeats",
            str(ns.repeats), "--waiters", str(ns.waiters), "--trials", str(ns.trials),
            "--stagger", str(ns.stagger)]  # fmt: skip
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child for {tree} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trees", nargs="*", help="name=path; the first is the base")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--waiters", type=int, default=8)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--stagger", type=float, default=20.0)
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        result = asyncio.run(_child(ns.child, ns.n, ns.repeats, ns.waiters, ns.trials, ns.stagger))
        print(json.dumps(result))
        return 0
    trees = [(name, Path(path).resolve()) for name, _, path in (t.partition("=") for t in ns.trees)]
    if len(trees) < 2:
        parser.error("give at least two trees, name=path")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    # The parent only: a child imports nothing of this directory but this file (its tree's
    # agentlocks may predate what redis_locks.py imports).
    from redis_locks import redis_server

    load0 = os.getloadavg()
    with redis_server(None) as url:
        for r in range(ns.rounds):
            k = r % len(trees)
            for name, path in [*trees[k:], *trees[:k]]:
                runs[name].append(_run_child(path, url, ns))
            line = "  ".join(
                f"{name} {runs[name][-1]['ours_us']:.0f}µs {runs[name][-1]['x_floor']:.2f}x "
                f"{runs[name][-1]['qh_rtts']:.1f}rtt"
                for name, _ in trees
            )
            print(f"round {r + 1}/{ns.rounds}: {line}", file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    base = trees[0][0]
    print(
        f"\n{ns.rounds} rounds, load average {load0[0]:.2f} at start, {load1[0]:.2f} at end "
        f"({os.cpu_count()} CPUs); uncontended {ns.repeats} x {ns.n}, fairness {ns.trials} x "
        f"{ns.waiters} waiters {ns.stagger:g} ms apart\n"
    )
    print(
        "| tree | µs/op | x floor | µs x base | queued hand-off p50 µs | in PING RTTs | "
        "hand-off x base | PING µs | FIFO violations |"
    )
    print("|:---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, _ in trees:
        rs, bs = runs[name], runs[base]
        x_base = _med([a["ours_us"] / b["ours_us"] for a, b in zip(rs, bs, strict=True)])
        qh_base = _med([a["qh_p50_us"] / b["qh_p50_us"] for a, b in zip(rs, bs, strict=True)])
        print(
            f"| {name} | {_med([x['ours_us'] for x in rs]):.1f} | "
            f"{_med([x['x_floor'] for x in rs]):.3f}x | {x_base:.3f}x | "
            f"{_med([x['qh_p50_us'] for x in rs]):.0f} | {_med([x['qh_rtts'] for x in rs]):.2f} | "
            f"{qh_base:.3f}x | {_med([x['ping_us'] for x in rs]):.0f} | "
            f"{sum(x['violations'] for x in rs)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
