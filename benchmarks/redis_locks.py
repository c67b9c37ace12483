"""agentlocks ``redis://`` beside the Python Redis locks and the raw floor, in one run.

Runs the four scenarios of the shared peer benchmark on one Redis server for: a PING
(one round trip, the physical floor), the raw floor (``SET NX PX`` + a Lua
compare-and-delete), agentlocks ``redis://``, redis-py's ``Lock`` (defaults, and
``sleep=0.001``), python-redis-lock and pottery, interleaved round by round. Then it checks
the targets of issue 3 ("Performance").

Deployments (issue 13): ``--also URL`` adds agentlocks on another Redis deployment as one
more row of every table (a ``redis+cluster://`` or ``redis+sentinel://`` URL given as
``--url`` counts as ``--also``, and the single-server baseline is then a throwaway server);
``--deployments`` starts a 3-master cluster and a primary + replica + 3 sentinels on
loopback (``tests/support/deployments.py``) and adds ``redis+cluster``, ``redis+sentinel``
and ``redis+sentinel`` with ``min_replicas=1``. Their targets: cluster hand-off p50 within
1.3x of single-node, many-keys throughput >= single-node, and the cost of min_replicas=1.

Usage::

    .venv/bin/python benchmarks/redis_locks.py                      # own throwaway server
    .venv/bin/python benchmarks/redis_locks.py --url redis://127.0.0.1:6379/0
    .venv/bin/python benchmarks/redis_locks.py --quick --only-ours  # smoke run, no peers
    .venv/bin/python benchmarks/redis_locks.py --only-ours --deployments

Without ``--url`` (or ``PB_REDIS_HOST``/``PB_REDIS_PORT``), it starts a throwaway
``redis-server`` on a free port and stops it at the end. The peers are optional: one whose
package is missing (``pip install python-redis-lock pottery``) is left out, and said so.
Prints markdown; progress goes to stderr. Exits 0 even when a target is missed (it is a
report): missed targets are printed as ``[NOT MET] !!!`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    run_rounds,
    spread,
    uncontended_rounds,
)

perf = time.perf_counter

# Issue 3, "Performance".
UNCONTENDED_MAX_RATIO = 1.2  # x the raw SET NX + delete floor
HANDOFF_MAX_RTTS = 4.0  # queued hand-off p50, in PING round trips
HANDOFF_MIN_SPEEDUP_VS_REDIS_PY = 20.0  # redis-py Lock with its defaults
MANYKEYS_MIN_RATIO = 0.9  # throughput, x the raw floor
# Issue 13: deployments beside single-node.
CLUSTER_HANDOFF_MAX_RATIO = 1.3  # queued hand-off p50, x single-node
CLUSTER_MANYKEYS_MIN_RATIO = 1.0  # throughput, x single-node
#: The contended scenarios of the slow peers take ~30 s per round: fewer rounds by default.
DEFAULT_ROUNDS = 3
#: PINGs measured right before each fairness run: the RTT its hand-off is compared with.
PINGS_BESIDE = 200

PING, FLOOR, OURS = "redis-ping-rtt", "redis-raw-setnx", "agentlocks-redis"
REDIS_PY, PRL = "redis-py-lock", "python-redis-lock"


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout is the markdown report alone."""
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """The server to measure on: ``url``, ``PB_REDIS_*``, or a throwaway ``redis-server``."""
    if url is None and os.environ.get("PB_REDIS_PORT"):
        url = f"redis://{os.environ.get('PB_REDIS_HOST', '127.0.0.1')}:"
        url += f"{os.environ['PB_REDIS_PORT']}/0"
    if url is not None:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no --url given and no redis-server on PATH to start one")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(200):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            log(f"started a throwaway redis-server on port {port}")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def row_name(url: str) -> str:
    """The table row of agentlocks on deployment ``url``: its scheme, plus min_replicas."""
    scheme = url.partition("://")[0]
    query = dict(p.partition("=")[::2] for p in urlsplit(url).query.split("&") if p)
    extra = f" min_replicas={query['min_replicas']}" if "min_replicas" in query else ""
    return f"agentlocks-{scheme}{extra}"


@contextlib.contextmanager
def deployments(wanted: bool) -> Iterator[list[str]]:
    """Start a cluster and a sentinel group if ``wanted``; yield the URLs to add."""
    if not wanted:
        yield []
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.deployments import ClusterDeployment, SentinelDeployment

    with tempfile.TemporaryDirectory() as workdir:
        cluster = ClusterDeployment(Path(workdir)).start()
        try:
            group = SentinelDeployment(Path(workdir)).start()
            try:
                log("started a 3-master cluster and a primary + replica + 3 sentinels")
                yield [cluster.url, group.url, group.url + "?min_replicas=1"]
            finally:
                group.stop()
        finally:
            cluster.stop()


def adapters_for(
    pb: Any,
    url: str,
    only_ours: bool,
    also: list[str] = [],  # noqa: B006 (never mutated)
) -> tuple[list[Any], list[str]]:
    """The adapters to run (PING, floor, ours, deployments, then the installed peers)."""
    chosen = [pb.RedisPingAdapter(), pb.RedisRawAdapter(), AgentlocksAdapter(url, name=OURS)]
    chosen += [AgentlocksAdapter(u, name=row_name(u), kind="redis") for u in also]
    missing: list[str] = []
    if only_ours:
        return chosen, missing
    peers = [
        ("redis", pb.RedisPyLockAdapter(None)),
        ("redis", pb.RedisPyLockAdapter(0.001)),
        ("python-redis-lock", pb.PythonRedisLockAdapter()),
        ("pottery", pb.PotteryAdapter()),
    ]
    for package, adapter in peers:
        try:
            version(package)
        except PackageNotFoundError:
            missing.append(f"{adapter.name} (pip install {package})")
            continue
        chosen.append(adapter)
    return chosen, missing


async def measure(pb: Any, args: Any, adapters: list[Any]) -> dict[str, Any]:
    for a in adapters:
        await a.setup()
    try:
        out: dict[str, Any] = {"adapters": adapters}
        t0 = perf()
        out["uncontended"] = await uncontended_rounds(
            pb, adapters, args.n, args.repeats, args.uncontended_rounds
        )
        log(f"  uncontended  {perf() - t0:5.1f} s")
        ping = next(a for a in adapters if a.name == PING)
        contended = [a for a in adapters if a.name != PING]
        for scn in ("handoff", "manykeys", "fairness"):
            t0 = perf()

            async def one(a: Any, scn: str = scn) -> dict[str, Any]:
                # The load of this shared machine drifts: the hand-off is compared with
                # a PING round trip measured just before it, not minutes earlier.
                rtt = await ping_p50_us(ping) if scn == "fairness" else None
                return {**await pb.run_scenario(a, scn, args), "ping_p50_us": rtt}

            out[scn] = await run_rounds(contended, one, args.rounds)
            log(f"  {scn:12s} {perf() - t0:5.1f} s")
        return out
    finally:
        for a in adapters:
            await a.teardown()


async def ping_p50_us(ping: Any, count: int = PINGS_BESIDE) -> float:
    """Median µs of ``count`` PINGs through peer_bench's PING adapter."""
    rtts = []
    for _ in range(count):
        t = perf()
        await ping.acquire("ping")
        rtts.append(perf() - t)
    return median(rtts) * 1e6


def report(m: dict[str, Any], args: Any) -> dict[str, Any]:
    """Print the four tables; return the figures the targets need."""
    names = [a.name for a in m["adapters"]]
    fig: dict[str, Any] = {}

    unc = m["uncontended"]
    print(
        f"\n## 1. Uncontended (1 task, 1 key, {args.n} acquire+release x {args.repeats} "
        f"repeats, {args.uncontended_rounds} rounds)\n"
    )
    rows = []
    for n in names:
        x_floor = per_round_ratios(unc, n, FLOOR, lambda r: r["us_per_op"])
        in_rtt = per_round_ratios(unc, n, PING, lambda r: r["us_per_op"])
        us = median(r["us_per_op"] for r in unc[n])
        p50 = median(r["p50_us"] for r in unc[n])
        p99 = median(r["p99_us"] for r in unc[n])
        rows.append([n, fmt(us, 1), fmt(median(r["ops_s"] for r in unc[n])),
                     f"{fmt(p50, 1)} / {fmt(p99, 1)}", fmt_ratio(median(x_floor)),
                     spread(x_floor), fmt(median(in_rtt), 1)])  # fmt: skip
        fig[f"unc:{n}"] = (us, median(x_floor), x_floor)
    print(markdown_table(
        ["adapter", "µs/op", "ops/s", "p50 / p99 µs", "x floor", "per-round x", "in PING RTTs"],
        rows,
    ))  # fmt: skip

    contended = [n for n in names if n != PING]
    ho = m["handoff"]
    fig["self_max"] = 0.0
    for hold in args.holds:
        h = f"hold{hold:g}ms"
        print(
            f"\n## 2. Hand-off loop ({args.waiters} tasks on one key, hold {hold:g} ms; "
            "µs from release() call to the next acquire() return)\n"
        )
        rows = []
        for n in contended:
            rs = [r[h] for r in ho[n]]
            selfs = max(r["self_reacquire_frac"] for r in rs)
            if n == OURS:
                fig["self_max"] = max(fig["self_max"], selfs)
            rows.append([n, fmt(median(r["p50_us"] for r in rs)),
                         fmt(median(r["p99_us"] for r in rs)),
                         fmt(median(r["cross_p50_us"] for r in rs)), f"{selfs:.0%}",
                         f"{min(min(r['grants_per_worker']) for r in rs)}-"
                         f"{max(max(r['grants_per_worker']) for r in rs)}",
                         str(sum(r["overlap_violations"] for r in rs)),
                         fmt(median(r["ops_s"] for r in rs))])  # fmt: skip
        print(markdown_table(
            ["adapter", "p50 µs", "p99 µs", "cross-task p50 µs", "self-reacquire",
             "grants per task", "exclusion violations", "key ops/s"],
            rows,
        ))  # fmt: skip

    mk = m["manykeys"]
    print(
        f"\n## 3. Many keys ({args.mk_tasks} tasks, {args.mk_keys} random keys, "
        f"{args.mk_total} acquire+release)\n"
    )
    rows = []
    for n in contended:
        # ours / floor: higher is better
        x_floor = per_round_ratios(mk, n, FLOOR, lambda r: r["ops_s"])
        rows.append([n, fmt(median(r["ops_s"] for r in mk[n])), fmt_ratio(median(x_floor)),
                     spread(x_floor), fmt(median(r["p50_us"] for r in mk[n])) + " / "
                     + fmt(median(r["p99_us"] for r in mk[n]))])  # fmt: skip
        fig[f"mk:{n}"] = (median(x_floor), x_floor)
        fig[f"mkops:{n}"] = median(r["ops_s"] for r in mk[n])
    print(markdown_table(
        ["adapter", "ops/s", "throughput x floor", "per-round x", "p50 / p99 µs"], rows
    ))  # fmt: skip

    fa = m["fairness"]
    print(
        f"\n## 4. Fairness ({args.waiters} waiters queued {args.fair_stagger:g} ms apart "
        f"behind a holder, {args.fair_trials} trials per round; queued hand-off = "
        "release() call -> next queued waiter's acquire() return; PING RTT measured "
        f"({PINGS_BESIDE} PINGs) just before each run, ratios taken per run)\n"
    )
    rows = []
    for n in contended:
        rs = fa[n]
        viol, grants = sum(r["violations"] for r in rs), sum(r["grants"] for r in rs)
        p50 = median(r["queued_handoff_p50_us"] for r in rs)
        rtts = median(r["queued_handoff_p50_us"] / r["ping_p50_us"] for r in rs)
        rows.append([n, f"{viol}/{grants}",
                     f"{fmt(p50)} / {fmt(median(r['queued_handoff_p90_us'] for r in rs))} / "
                     f"{fmt(max(r['queued_handoff_max_us'] for r in rs))}",
                     fmt(rtts, 1), fmt(median(r["ping_p50_us"] for r in rs)),
                     " ".join(rs[0]["orders"])])  # fmt: skip
        fig[f"fair:{n}"] = (viol, grants, p50, rtts, median(r["ping_p50_us"] for r in rs))
    print(markdown_table(
        ["adapter", "FIFO violations", "queued hand-off p50 / p90 / max µs", "p50 in PING RTTs",
         "PING p50 µs beside it", "grant orders (round 1)"],
        rows,
    ))  # fmt: skip
    return fig


def targets(fig: dict[str, Any]) -> list[Target]:
    unc_us, unc_x, unc_rounds = fig[f"unc:{OURS}"]
    floor_us = fig[f"unc:{FLOOR}"][0]
    viol, grants, qh, qh_rtts, ping_us = fig[f"fair:{OURS}"]
    mk_x, mk_rounds = fig[f"mk:{OURS}"]
    out = [
        Target(
            f"uncontended acquire+release <= {UNCONTENDED_MAX_RATIO:g}x the raw SET NX + delete",
            unc_x <= UNCONTENDED_MAX_RATIO,
            f"{unc_x:.2f}x ({unc_us:.1f} vs {floor_us:.1f} µs/op; per round {spread(unc_rounds)})",
        ),
        Target(
            f"queued hand-off p50 <= {HANDOFF_MAX_RTTS:g} PING round trips",
            qh_rtts <= HANDOFF_MAX_RTTS,
            f"{qh_rtts:.2f} RTTs ({qh:.0f} µs; PING {ping_us:.0f} µs, measured beside it)",
        ),
    ]
    if f"fair:{REDIS_PY}" in fig:
        theirs = fig[f"fair:{REDIS_PY}"][2]
        out.append(Target(
            f"queued hand-off >= {HANDOFF_MIN_SPEEDUP_VS_REDIS_PY:g}x faster than redis-py Lock "
            "(defaults)",
            theirs >= HANDOFF_MIN_SPEEDUP_VS_REDIS_PY * qh,
            f"{theirs / qh:.1f}x ({qh:.0f} vs {theirs:.0f} µs)",
        ))  # fmt: skip
    else:
        out.append(Target("queued hand-off >= 20x faster than redis-py Lock", None, "not run"))
    if f"fair:{PRL}" in fig:
        theirs = fig[f"fair:{PRL}"][2]
        out.append(Target(
            "queued hand-off faster than python-redis-lock",
            qh < theirs,
            f"{qh:.0f} vs {theirs:.0f} µs ({theirs / qh:.2f}x faster)",
        ))  # fmt: skip
    else:
        out.append(Target("queued hand-off faster than python-redis-lock", None, "not run"))
    out += [
        Target("FIFO violations == 0", viol == 0, f"{viol} of {grants} grants"),
        Target(
            "self-handoff (self-reacquire in the hand-off loop) == 0%",
            fig["self_max"] == 0,
            f"{fig['self_max']:.1%} (worst hold time and round)",
        ),
        Target(
            f"64 tasks over 1000 keys: throughput >= {MANYKEYS_MIN_RATIO:g}x the raw floor",
            mk_x >= MANYKEYS_MIN_RATIO,
            f"{mk_x:.2f}x (per round {spread(mk_rounds)})",
        ),
    ]
    return out + deployment_targets(fig)


def deployment_targets(fig: dict[str, Any]) -> list[Target]:
    """Issue 13: each cluster row against single-node (queued hand-off, many keys)."""
    single_qh, single_mk = fig[f"fair:{OURS}"][2], fig[f"mkops:{OURS}"]
    out = []
    for name in _deployment_rows(fig):
        if "cluster" not in name:
            continue
        qh, mk = fig[f"fair:{name}"][2], fig[f"mkops:{name}"]
        out.append(Target(
            f"{name}: queued hand-off p50 <= {CLUSTER_HANDOFF_MAX_RATIO:g}x single-node",
            qh <= CLUSTER_HANDOFF_MAX_RATIO * single_qh,
            f"{qh / single_qh:.2f}x ({qh:.0f} vs {single_qh:.0f} µs)",
        ))  # fmt: skip
        out.append(Target(
            f"{name}: many-keys throughput >= {CLUSTER_MANYKEYS_MIN_RATIO:g}x single-node",
            mk >= CLUSTER_MANYKEYS_MIN_RATIO * single_mk,
            f"{mk / single_mk:.2f}x ({mk:,.0f} vs {single_mk:,.0f} ops/s)",
        ))  # fmt: skip
    return out


def deployment_notes(fig: dict[str, Any]) -> list[str]:
    """The other deployment rows beside single-node (sentinel, min_replicas): no target."""
    single_qh, single_mk = fig[f"fair:{OURS}"][2], fig[f"mkops:{OURS}"]
    notes = []
    for name in _deployment_rows(fig):
        if "cluster" in name:
            continue
        qh, mk = fig[f"fair:{name}"][2], fig[f"mkops:{name}"]
        notes.append(
            f"- {name} beside single-node: queued hand-off p50 {qh:.0f} vs {single_qh:.0f} µs "
            f"({qh / single_qh:.2f}x), many keys {mk:,.0f} vs {single_mk:,.0f} ops/s "
            f"({mk / single_mk:.2f}x)"
        )
    return notes


def _deployment_rows(fig: dict[str, Any]) -> list[str]:
    rows = [k.partition(":")[2] for k in fig if k.startswith("fair:agentlocks-redis")]
    return sorted(r for r in rows if r != OURS)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_peer_arguments(parser)
    parser.add_argument("--url", help="the Redis server to use (default: start a throwaway one)")
    parser.add_argument(
        "--only-ours", action="store_true", help="PING, the raw floor and agentlocks only"
    )
    parser.add_argument(
        "--also", action="append", default=[], metavar="URL",
        help="agentlocks on another deployment (redis+cluster://, redis+sentinel://), one row",
    )  # fmt: skip
    parser.add_argument(
        "--deployments", action="store_true",
        help="start a cluster and a sentinel group on loopback and add their rows",
    )  # fmt: skip
    ns = parser.parse_args()
    if ns.url and "+" in ns.url.partition("://")[0]:
        ns.also, ns.url = [ns.url, *ns.also], None  # the baseline is a throwaway server
    if ns.rounds is None and not ns.quick:
        ns.rounds = DEFAULT_ROUNDS
    args = peer_args(ns)
    with redis_server(ns.url) as url, deployments(ns.deployments) as started_urls:
        parts = urlsplit(url)
        # peer_bench reads its server from the environment when it is imported.
        os.environ["PB_REDIS_HOST"] = parts.hostname or "127.0.0.1"
        os.environ["PB_REDIS_PORT"] = str(parts.port or 6379)
        try:
            pb = load_peer_bench()
        except PeerBenchMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        adapters, missing = adapters_for(pb, url, ns.only_ours, [*ns.also, *started_urls])
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        load0 = os.getloadavg()
        t0 = perf()
        log("measuring (rounds interleave the adapters; progress on stderr) ...")
        m = asyncio.run(measure(pb, args, adapters))
        load1 = os.getloadavg()

    print("# agentlocks redis:// vs Python Redis locks\n")
    print(
        f"- started {started}, wall {perf() - t0:.0f} s; load average {load0[0]:.2f} at "
        f"start, {load1[0]:.2f} at end ({os.cpu_count()} CPUs)"
    )
    versions = ", ".join(
        f"{p} {version(p)}"
        for p in ("agentlocks", "redis", "hiredis", "python-redis-lock", "pottery")
        if _installed(p)
    )
    print(
        f"- Python {platform.python_version()} ({platform.platform()}), default asyncio "
        f"loop; {versions}"
    )
    print(
        f"- scenarios from {peer_bench_path()} (run {pb.RUN_ID}); {args.rounds} interleaved "
        f"round(s) per contended scenario ({args.uncontended_rounds} uncontended), "
        f"{'--quick counts' if ns.quick else 'peer_bench default counts'}"
    )
    print(
        "- each figure is the median over rounds; `x floor` is the median of per-round ratios "
        f"to {FLOOR} (SET NX PX + Lua compare-and-delete) measured in the same round"
    )
    if missing:
        print(f"- left out (package not installed): {', '.join(missing)}")
    figures = report(m, args)
    print_targets("Targets (issue 3, Performance; issue 13, deployments)", targets(figures))
    notes = deployment_notes(figures)
    if notes:
        print("\nDeployments without a target (the cost of what they add):\n")
        print("\n".join(notes))
    return 0


def _installed(package: str) -> bool:
    try:
        version(package)
    except PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
