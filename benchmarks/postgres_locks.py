"""agentlocks ``postgresql://`` against raw asyncpg advisory locks, in one process and one run.

Compares agentlocks' PostgreSQL backend with the floor of peer_bench (an asyncpg pool,
``pg_advisory_lock`` / ``pg_advisory_unlock``, no pool reset), with the same floor *with*
asyncpg's default pool reset, and with one ``SELECT 1`` round trip, on the four scenarios
of the shared peer benchmark; then checks the targets of issue 4 ("Performance").

The server: ``--dsn``, else ``$PB_PG_DSN``, else ``$AGENTLOCKS_TEST_POSTGRES_URL`` (so it
runs inside ``scripts/test``'s environment), else peer_bench's default. The server needs
``max_connections`` of 250 or more: peer_bench's raw-floor pools keep up to 80 connections
each (``scripts/test`` starts its server with 300); with PostgreSQL's default of 100 the
floor itself fails with ``TooManyConnectionsError``.

Usage::

    .venv/bin/python benchmarks/postgres_locks.py --dsn postgresql://postgres@127.0.0.1:5441/postgres
    .venv/bin/python benchmarks/postgres_locks.py --quick        # small counts (a smoke run)

Prints markdown. Exits 0 even when a target is missed (it is a report); missed targets are
printed as ``[NOT MET] !!!`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from importlib.metadata import version
from typing import Any

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
    per_round_ratios,
    print_targets,
    run_rounds,
    spread,
    uncontended_rounds,
)

perf = time.perf_counter

# Issue 4, "Performance".
UNCONTENDED_MAX_RATIO = 1.2  # issue 10 (issue 4 asked 1.3)
HANDOFF_MAX_RATIO = 1.5
MANYKEYS_MIN_RATIO = 0.8


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout is the markdown report alone."""
    print(msg, file=sys.stderr, flush=True)


def dsn_from(ns: argparse.Namespace, pb: Any) -> str:
    """The server to measure on (see the module docstring)."""
    return str(
        ns.dsn
        or os.environ.get("PB_PG_DSN")
        or os.environ.get("AGENTLOCKS_TEST_POSTGRES_URL")
        or pb.PG_DSN
    )


async def measure(pb: Any, args: Any, dsn: str) -> dict[str, Any]:
    pb.PG_DSN = dsn  # peer_bench's adapters read it at setup
    rtt = pb.PgSelect1Adapter()
    floor = pb.PgAdvisoryAdapter(False)
    adapters = [rtt, floor, pb.PgAdvisoryAdapter(True), AgentlocksAdapter(dsn)]
    ours = adapters[-1]
    for a in adapters:
        await a.setup()
    try:
        out: dict[str, Any] = {"adapters": adapters, "floor": floor.name, "ours": ours.name}
        out["rtt"] = rtt.name
        t0 = perf()
        out["uncontended"] = await uncontended_rounds(
            pb, adapters, args.n, args.repeats, args.uncontended_rounds
        )
        log(f"  uncontended  {perf() - t0:5.1f} s")
        locks = [a for a in adapters if a is not rtt]
        for scn in ("handoff", "manykeys", "fairness"):
            t0 = perf()

            async def one(a: Any, scn: str = scn) -> dict[str, Any]:
                return dict(await pb.run_scenario(a, scn, args))

            out[scn] = await run_rounds(locks, one, args.rounds)
            log(f"  {scn:12s} {perf() - t0:5.1f} s")
        out["connections"] = ours.coord.backend.connection_count()
        return out
    finally:
        for a in adapters:
            await a.teardown()


def report(m: dict[str, Any], args: Any) -> dict[str, Any]:
    """Print the four tables; return the figures the targets need."""
    floor, rtt = m["floor"], m["rtt"]
    names = [a.name for a in m["adapters"]]
    figures: dict[str, Any] = {}

    unc = m["uncontended"]
    print(
        f"\n## 1. Uncontended (1 task, 1 key, {args.n} acquire+release x {args.repeats} "
        f"repeats, {args.uncontended_rounds} rounds)\n"
    )
    rows = []
    for n in names:
        xs = per_round_ratios(unc, n, floor, lambda r: r["us_per_op"])
        in_rtt = median(per_round_ratios(unc, n, rtt, lambda r: r["us_per_op"]))
        us = median(r["us_per_op"] for r in unc[n])
        rows.append([
            n, fmt(us, 1), fmt(median(r["ops_s"] for r in unc[n])),
            " / ".join(fmt(median(r[f] for r in unc[n]), 1) for f in ("p50_us", "p99_us")),
            fmt(in_rtt, 1), fmt_ratio(median(xs)), spread(xs),
        ])  # fmt: skip
        figures[f"unc:{n}"] = (us, median(xs), xs)
    print(markdown_table(
        ["adapter", "µs/op", "ops/s", "p50 / p99 µs", "in SELECT-1 RTTs", "x floor",
         "per-round x"], rows,
    ))  # fmt: skip

    ho = m["handoff"]
    for hold in args.holds:
        h = f"hold{hold:g}ms"
        print(
            f"\n## 2. Hand-off loop ({args.waiters} tasks on one key, hold {hold:g} ms; "
            "µs from release() call to the next acquire() return)\n"
        )
        per = {k: [r[h] for r in v] for k, v in ho.items()}
        rows = []
        for n in per:
            rs = per[n]
            xs = per_round_ratios(per, n, floor, lambda r: r["p50_us"])
            rows.append([
                n, fmt(median(r["p50_us"] for r in rs)), fmt(median(r["p99_us"] for r in rs)),
                f"{max(r['self_reacquire_frac'] for r in rs):.0%}",
                f"{min(min(r['grants_per_worker']) for r in rs)}-"
                f"{max(max(r['grants_per_worker']) for r in rs)}",
                str(sum(r["overlap_violations"] for r in rs)),
                fmt(median(r["ops_s"] for r in rs)), fmt_ratio(median(xs)), spread(xs),
            ])  # fmt: skip
            figures[f"ho{hold:g}:{n}"] = (median(r["p50_us"] for r in rs), median(xs), xs)
        print(markdown_table(
            ["adapter", "p50 µs", "p99 µs", "self-reacquire", "grants per task",
             "exclusion violations", "key ops/s", "p50 x floor", "per-round x"], rows,
        ))  # fmt: skip

    mk = m["manykeys"]
    print(
        f"\n## 3. Many keys ({args.mk_tasks} tasks, {args.mk_keys} random keys, "
        f"{args.mk_total} acquire+release)\n"
    )
    rows = []
    for n in mk:
        xs = per_round_ratios(mk, n, floor, lambda r: r["ops_s"])  # ours / floor: higher is better
        ops = median(r["ops_s"] for r in mk[n])
        rows.append([
            n, fmt(ops), fmt_ratio(median(xs)), spread(xs),
            " / ".join(fmt(median(r[f] for r in mk[n])) for f in ("p50_us", "p99_us")),
        ])  # fmt: skip
        figures[f"mk:{n}"] = (ops, median(xs), xs)
    print(markdown_table(
        ["adapter", "ops/s", "throughput x floor", "per-round x", "p50 / p99 µs"], rows
    ))  # fmt: skip

    fa = m["fairness"]
    print(
        f"\n## 4. Fairness ({args.waiters} waiters queued {args.fair_stagger:g} ms apart "
        f"behind a holder, {args.fair_trials} trials per round; queued hand-off = "
        "release() call -> next queued waiter's acquire() return)\n"
    )
    rows = []
    for n in fa:
        rs = fa[n]
        xs = per_round_ratios(fa, n, floor, lambda r: r["queued_handoff_p50_us"])
        viol, grants = sum(r["violations"] for r in rs), sum(r["grants"] for r in rs)
        p50 = median(r["queued_handoff_p50_us"] for r in rs)
        rows.append([
            n, f"{viol}/{grants}",
            f"{fmt(p50)} / {fmt(median(r['queued_handoff_p90_us'] for r in rs))} / "
            f"{fmt(max(r['queued_handoff_max_us'] for r in rs))}",
            fmt_ratio(median(xs)), spread(xs), " ".join(rs[0]["orders"]),
        ])  # fmt: skip
        figures[f"fair:{n}"] = (viol, grants, p50, median(xs), xs)
    print(markdown_table(
        ["adapter", "FIFO violations", "queued hand-off p50 / p90 / max µs", "p50 x floor",
         "per-round x", "grant orders (round 1)"], rows,
    ))  # fmt: skip
    print(f"\nagentlocks connections open at the end: {m['connections']}")
    return figures


def targets(m: dict[str, Any], f: dict[str, Any]) -> list[Target]:
    ours, floor = m["ours"], m["floor"]
    unc_us, unc_x, unc_xs = f[f"unc:{ours}"]
    ho_us, ho_x, ho_xs = f[f"ho0:{ours}"]
    viol, grants, qh_us, qh_x, qh_xs = f[f"fair:{ours}"]
    mk_ops, mk_x, mk_xs = f[f"mk:{ours}"]
    return [
        Target(
            f"uncontended acquire+release <= {UNCONTENDED_MAX_RATIO:g}x raw advisory lock",
            unc_x <= UNCONTENDED_MAX_RATIO,
            f"{unc_x:.2f}x ({unc_us:.1f} vs {f[f'unc:{floor}'][0]:.1f} µs/op; "
            f"per round {spread(unc_xs)})",
        ),
        Target(
            f"queued hand-off p50 (8 waiters) <= {HANDOFF_MAX_RATIO:g}x raw advisory lock",
            qh_x <= HANDOFF_MAX_RATIO,
            f"{qh_x:.2f}x ({qh_us:.0f} vs {f[f'fair:{floor}'][2]:.0f} µs; per round "
            f"{spread(qh_xs)})",
        ),
        Target(
            f"hand-off loop p50 (8 tasks, hold 0) <= {HANDOFF_MAX_RATIO:g}x raw advisory lock",
            ho_x <= HANDOFF_MAX_RATIO,
            f"{ho_x:.2f}x ({ho_us:.0f} vs {f[f'ho0:{floor}'][0]:.0f} µs; per round "
            f"{spread(ho_xs)})",
        ),
        Target("FIFO violations == 0", viol == 0, f"{viol} of {grants} grants"),
        Target(
            f"many keys throughput >= {MANYKEYS_MIN_RATIO:g}x raw advisory lock",
            mk_x >= MANYKEYS_MIN_RATIO,
            f"{mk_x:.2f}x ({mk_ops:,.0f} vs {f[f'mk:{floor}'][0]:,.0f} ops/s; per round "
            f"{spread(mk_xs)})",
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_peer_arguments(parser)
    parser.add_argument("--dsn", help="PostgreSQL URL (see above for the default)")
    ns = parser.parse_args()
    args = peer_args(ns)
    try:
        pb = load_peer_bench()
    except PeerBenchMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dsn = dsn_from(ns, pb)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load0 = os.getloadavg()
    t0 = perf()
    log("measuring (rounds interleave the adapters; progress on stderr) ...")
    m = asyncio.run(measure(pb, args, dsn))
    print("# agentlocks postgresql:// vs raw asyncpg advisory locks\n")
    print(
        f"- started {started}, wall {perf() - t0:.0f} s; load average {load0[0]:.2f} at "
        f"start, {os.getloadavg()[0]:.2f} at end ({os.cpu_count()} CPUs)"
    )
    print(
        f"- Python {platform.python_version()}, asyncpg {version('asyncpg')}, agentlocks "
        f"{version('agentlocks')}; floor = `{m['floor']}` (pool, no reset), RTT = "
        f"`{m['rtt']}`"
    )
    print(
        f"- {args.rounds} interleaved round(s) per contended scenario "
        f"({args.uncontended_rounds} uncontended); figures are medians over rounds, `x` "
        "columns the median of per-round ratios to the floor measured in the same round"
    )
    figures = report(m, args)
    print_targets("Targets (issue 4)", targets(m, figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
