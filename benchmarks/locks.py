"""agentlocks ``memory://`` against the in-process floors, in one process and one run.

Compares agentlocks' in-process backend with a dict of ``asyncio.Lock`` (the floor) and a
dict of ``anyio.Lock`` (default and ``fast_acquire=True``) on the four scenarios of the
shared peer benchmark, then checks the targets of issue 2 ("Performance") and runs the
memory check: acquire and release 1,000,000 distinct keys, then count what is left.

Usage::

    .venv/bin/python benchmarks/locks.py             # default counts (~1-2 minutes)
    .venv/bin/python benchmarks/locks.py --quick     # small counts, 100,000-key memory check
    .venv/bin/python benchmarks/locks.py --help      # every count can be set

Prints markdown. Exits 0 even when a target is missed (it is a report); missed targets
are printed as ``[NOT MET] !!!`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import sys
import time
from importlib.metadata import version
from typing import Any

import agentlocks
from _common import (
    AgentlocksAdapter,
    PeerBenchMissing,
    Target,
    add_peer_arguments,
    fmt,
    fmt_ratio,
    load_peer_bench,
    markdown_table,
    median,
    peer_args,
    peer_bench_path,
    per_round_ratios,
    print_targets,
    rss_bytes,
    run_rounds,
    spread,
    uncontended_rounds,
)

perf = time.perf_counter
MB = 1_000_000

# Issue 2, "Performance".
UNCONTENDED_MAX_RATIO = 3.0
QUEUED_HANDOFF_MAX_RATIO = 2.0
MEMORY_KEYS = 1_000_000
MEMORY_KEYS_QUICK = 100_000
RSS_MAX_GROWTH = 5 * MB


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout is the markdown report alone."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- measuring
async def measure(pb: Any, args: Any) -> dict[str, Any]:
    floor = pb.AsyncioLockAdapter()
    ours = AgentlocksAdapter("memory://")
    adapters = [floor, pb.AnyioLockAdapter(), pb.AnyioLockAdapter(True), ours]
    for a in adapters:
        await a.setup()
    try:
        out: dict[str, Any] = {"adapters": adapters, "floor": floor.name, "ours": ours.name}
        t0 = perf()
        out["uncontended"] = await uncontended_rounds(
            pb, adapters, args.n, args.repeats, args.uncontended_rounds
        )
        log(f"  uncontended  {perf() - t0:5.1f} s")
        for scn in ("handoff", "manykeys", "fairness"):
            t0 = perf()

            async def one(a: Any, scn: str = scn) -> dict[str, Any]:
                return dict(await pb.run_scenario(a, scn, args))

            out[scn] = await run_rounds(adapters, one, args.rounds)
            log(f"  {scn:12s} {perf() - t0:5.1f} s")
        # The library's own state after every scenario: nothing may be left behind.
        out["entries_after"] = len(ours.coord.backend)
        return out
    finally:
        for a in adapters:
            await a.teardown()


async def memory_check(keys: int) -> dict[str, Any]:
    """Acquire and release ``keys`` distinct keys one after the other; measure what stays."""
    coord = agentlocks.connect("memory://")
    for i in range(1000):  # first-use costs (code paths, free lists) outside the measure
        lease = await coord.acquire(f"warm{i}")
        await lease.release()
    gc.collect()
    rss0 = rss_bytes()
    t0 = perf()
    for i in range(keys):
        lease = await coord.acquire(f"k{i}")
        await lease.release()
    elapsed = perf() - t0
    gc.collect()
    rss1 = rss_bytes()
    entries = len(coord.backend)
    await coord.aclose()
    return {"keys": keys, "entries": entries, "rss0": rss0, "rss1": rss1, "elapsed": elapsed}


# --------------------------------------------------------------------------- summarising


def med(rs: list[dict[str, Any]], *fields: str, nd: int = 1) -> str:
    """Medians over rounds of ``fields``, formatted and joined by `` / ``."""
    return " / ".join(fmt(median(r[f] for r in rs), nd) for f in fields)


def report(m: dict[str, Any], args: Any) -> dict[str, Any]:
    """Print the four tables; return the figures the targets need."""
    names = [a.name for a in m["adapters"]]
    floor = m["floor"]
    figures: dict[str, Any] = {}

    unc = m["uncontended"]
    print(
        f"\n## 1. Uncontended (1 task, 1 key, {args.n} acquire+release x {args.repeats} "
        f"repeats, {args.uncontended_rounds} rounds)\n"
    )
    rows = []
    for n in names:
        ratios = per_round_ratios(unc, n, floor, lambda r: r["us_per_op"])
        us = median(r["us_per_op"] for r in unc[n])
        rows.append(
            [
                n,
                fmt(us, 2),
                fmt(median(r["ops_s"] for r in unc[n])),
                med(unc[n], "p50_us", "p99_us", nd=2),
                fmt_ratio(median(ratios)),
                spread(ratios),
            ]
        )
        figures[f"unc_us:{n}"] = us
        figures[f"unc_ratio:{n}"] = (median(ratios), ratios)
    print(
        markdown_table(
            ["adapter", "µs/op", "ops/s", "p50 / p99 µs", "x asyncio-lock", "per-round x"], rows
        )
    )

    ho = m["handoff"]
    self_max = 0.0
    for hold in args.holds:
        h = f"hold{hold:g}ms"
        print(
            f"\n## 2. Hand-off loop ({args.waiters} tasks on one key, hold {hold:g} ms; "
            "µs from release() call to the next acquire() return)\n"
        )
        rows = []
        for n in names:
            rs = [r[h] for r in ho[n]]
            ratios = per_round_ratios(
                {k: [r[h] for r in v] for k, v in ho.items()}, n, floor, lambda r: r["p50_us"]
            )
            selfs = max(r["self_reacquire_frac"] for r in rs)
            if n == m["ours"]:
                self_max = max(self_max, selfs)
            rows.append(
                [
                    n,
                    fmt(median(r["p50_us"] for r in rs), 1),
                    fmt(median(r["p99_us"] for r in rs), 1),
                    fmt(median(r["cross_p50_us"] for r in rs), 1),
                    f"{selfs:.0%}",
                    f"{min(min(r['grants_per_worker']) for r in rs)}-"
                    f"{max(max(r['grants_per_worker']) for r in rs)}",
                    str(sum(r["overlap_violations"] for r in rs)),
                    fmt(median(r["ops_s"] for r in rs)),
                    fmt_ratio(median(ratios)),
                ]
            )
        print(markdown_table(
            ["adapter", "p50 µs", "p99 µs", "cross-task p50 µs", "self-reacquire",
             "grants per task", "exclusion violations", "key ops/s", "p50 x asyncio-lock"],
            rows,
        ))  # fmt: skip
    figures["self_max"] = self_max

    mk = m["manykeys"]
    print(
        f"\n## 3. Many keys ({args.mk_tasks} tasks, {args.mk_keys} random keys, "
        f"{args.mk_total} acquire+release)\n"
    )
    rows = []
    for n in names:
        ratios = per_round_ratios(mk, floor, n, lambda r: r["ops_s"])  # floor ops / ours
        rows.append(
            [
                n,
                fmt(median(r["ops_s"] for r in mk[n])),
                fmt_ratio(median(ratios)) + " slower",
                med(mk[n], "p50_us", "p99_us"),
            ]
        )
    print(markdown_table(["adapter", "ops/s", "x asyncio-lock", "p50 / p99 µs"], rows))

    fa = m["fairness"]
    print(
        f"\n## 4. Fairness ({args.waiters} waiters queued {args.fair_stagger:g} ms apart "
        f"behind a holder, {args.fair_trials} trials per round; queued hand-off = "
        "release() call -> next queued waiter's acquire() return)\n"
    )
    rows = []
    for n in names:
        rs = fa[n]
        ratios = per_round_ratios(fa, n, floor, lambda r: r["queued_handoff_p50_us"])
        viol = sum(r["violations"] for r in rs)
        grants = sum(r["grants"] for r in rs)
        p50 = median(r["queued_handoff_p50_us"] for r in rs)
        rows.append(
            [
                n,
                f"{viol}/{grants}",
                f"{fmt(p50, 1)} / {fmt(median(r['queued_handoff_p90_us'] for r in rs), 1)} / "
                f"{fmt(max(r['queued_handoff_max_us'] for r in rs), 1)}",
                fmt_ratio(median(ratios)),
                spread(ratios),
                " ".join(rs[0]["orders"]),
            ]
        )
        figures[f"fair:{n}"] = (viol, grants, p50, median(ratios), ratios)
    print(markdown_table(
        ["adapter", "FIFO violations", "queued hand-off p50 / p90 / max µs",
         "p50 x asyncio-lock", "per-round x", "grant orders (round 1)"],
        rows,
    ))  # fmt: skip
    return figures


def targets(m: dict[str, Any], figures: dict[str, Any], mem: dict[str, Any]) -> list[Target]:
    ours, floor = m["ours"], m["floor"]
    unc_ratio, unc_rounds = figures[f"unc_ratio:{ours}"]
    viol, grants, qh_p50, qh_ratio, qh_rounds = figures[f"fair:{ours}"]
    floor_qh = figures[f"fair:{floor}"][2]
    self_max = figures["self_max"]
    rss0, rss1 = mem["rss0"], mem["rss1"]
    growth = None if rss0 is None or rss1 is None else rss1 - rss0
    return [
        Target(
            f"uncontended acquire+release <= {UNCONTENDED_MAX_RATIO:g}x asyncio.Lock",
            unc_ratio <= UNCONTENDED_MAX_RATIO,
            f"{unc_ratio:.2f}x ({figures[f'unc_us:{ours}']:.2f} vs "
            f"{figures[f'unc_us:{floor}']:.2f} µs/op; per round {spread(unc_rounds)})",
        ),
        Target(
            f"queued hand-off p50 <= {QUEUED_HANDOFF_MAX_RATIO:g}x asyncio.Lock",
            qh_ratio <= QUEUED_HANDOFF_MAX_RATIO,
            f"{qh_ratio:.2f}x ({qh_p50:.1f} vs {floor_qh:.1f} µs; per round {spread(qh_rounds)})",
        ),
        Target("FIFO violations == 0", viol == 0, f"{viol} of {grants} grants"),
        Target(
            "self-handoff (self-reacquire in the hand-off loop) == 0%",
            self_max == 0,
            f"{self_max:.1%} (worst hold time and round)",
        ),
        Target(
            f"memory: backend entries after {mem['keys']:,} distinct keys == 0",
            mem["entries"] == 0 and m["entries_after"] == 0,
            f"{mem['entries']} left (and {m['entries_after']} after the scenarios)",
        ),
        Target(
            f"memory: RSS within {RSS_MAX_GROWTH / MB:g} MB of the start after "
            f"{mem['keys']:,} keys",
            None if growth is None else abs(growth) <= RSS_MAX_GROWTH,
            "RSS not readable on this platform"
            if growth is None
            else f"{growth / MB:+.2f} MB ({rss0 / MB:.1f} -> {rss1 / MB:.1f} MB)",
        ),
    ]


# --------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_peer_arguments(parser)
    parser.add_argument(
        "--memory-keys",
        type=int,
        default=None,
        help=f"distinct keys in the memory check (default {MEMORY_KEYS:,}; "
        f"--quick {MEMORY_KEYS_QUICK:,})",
    )
    ns = parser.parse_args()
    args = peer_args(ns)
    keys = ns.memory_keys or (MEMORY_KEYS_QUICK if ns.quick else MEMORY_KEYS)
    try:
        pb = load_peer_bench()
    except PeerBenchMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load0 = os.getloadavg()
    t0 = perf()
    log("measuring (rounds interleave the adapters; progress on stderr) ...")
    m = asyncio.run(measure(pb, args))
    t_mem = perf()
    mem = asyncio.run(memory_check(keys))
    log(f"  memory check {perf() - t_mem:5.1f} s")
    load1 = os.getloadavg()

    print("# agentlocks memory:// vs in-process locks\n")
    print(
        f"- started {started}, wall {perf() - t0:.0f} s; load average "
        f"{load0[0]:.2f} at start, {load1[0]:.2f} at end ({os.cpu_count()} CPUs)"
    )
    print(
        f"- Python {platform.python_version()} ({platform.platform()}), default asyncio loop; "
        f"agentlocks {version('agentlocks')}, anyio {version('anyio')}"
    )
    print(
        f"- scenarios from {peer_bench_path()} (run {pb.RUN_ID}); "
        f"{args.rounds} interleaved round(s) per contended scenario "
        f"({args.uncontended_rounds} uncontended), "
        f"{'--quick counts' if ns.quick else 'peer_bench default counts'}"
    )
    print(
        "- each figure is the median over rounds; `x` columns are the median of the "
        "per-round ratios to asyncio-lock measured in the same round"
    )
    figures = report(m, args)

    print(f"\n## 5. Memory ({keys:,} distinct keys acquired and released one after the other)\n")
    rss0, rss1 = mem["rss0"], mem["rss1"]
    print(markdown_table(
        ["keys", "µs per acquire+release", "entries left", "RSS before MB", "RSS after MB",
         "RSS growth MB"],
        [[f"{keys:,}", fmt(mem["elapsed"] / keys * 1e6, 2), str(mem["entries"]),
          fmt(None if rss0 is None else rss0 / MB, 1), fmt(None if rss1 is None else rss1 / MB, 1),
          "-" if rss0 is None or rss1 is None else f"{(rss1 - rss0) / MB:+.2f}"]],
    ))  # fmt: skip

    print_targets("Targets (issue 2, Performance)", targets(m, figures, mem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
