"""``agentlocks bench URL``: the benchmark scenarios on one backend, next to its raw floor."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from typing import Any

from . import _bench as bench
from ._cli_output import has_rich, print_table
from ._url import redact_url
from .coordinator import connect
from .errors import AgentLocksError, BackendError, ConfigError

__all__ = ["run_bench"]


def _floors(url: str, kind: str) -> tuple[list[bench.Adapter], list[bench.Adapter]]:
    """(floors that run every scenario, one-round-trip floors for the uncontended one)."""
    if kind == "redis":
        return [bench.RedisSetNxFloor(url)], [bench.RedisPingFloor(url)]
    if kind == "pg":
        return [bench.PgAdvisoryFloor(url)], [bench.PgSelect1Floor(url)]
    return [bench.AsyncioLockFloor()], []


def _progress(message: str) -> None:
    if sys.stderr.isatty():  # piped or captured stderr keeps only errors: one line each
        print(message, file=sys.stderr, flush=True)


async def run_bench(args: argparse.Namespace) -> int:
    """Measure, print the table (or JSON), and plot if asked."""
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib")
    connect(args.url)  # a bad URL or a missing driver fails here, before any I/O
    ours = bench.AgentlocksAdapter(args.url, name="agentlocks")
    floors, rtts = _floors(args.url, ours.kind)
    if ours.kind == "redis" and "+" in args.url.split(":", 1)[0]:
        floors, rtts = [], []  # cluster / sentinel URLs: the floors speak to one server
    settings = bench.QUICK if args.quick else bench.Settings()
    adapters: list[bench.Adapter] = [ours, *floors]
    results: dict[str, dict[str, Any]] = {a.name: {"notes": a.notes} for a in adapters + rtts}
    ready: list[bench.Adapter] = []
    try:
        # agentlocks first, with one acquire: an unreachable server or a bad password is
        # reported by the library (one line, password masked) before any floor connects.
        await ours.setup()
        ready.append(ours)
        await ours.release(await ours.acquire(bench.kname("probe", 0)))
        for a in [*floors, *rtts]:
            try:
                await a.setup()
            except Exception as exc:
                raise BackendError(f"{a.name}: could not connect: {type(exc).__name__}") from exc
            ready.append(a)
        await _measure(ready, adapters, settings, results)
    finally:
        for a in ready:
            await a.teardown()
    if args.json:
        print(json.dumps(results))
    else:
        floor = floors[0].name if floors else None
        _table(results, floor, rtts[0].name if rtts else None, args.plain or not has_rich())
    if args.plot:
        _plot(results, args.plot, [a.name for a in adapters])
        _progress(f"plot written to {args.plot}")
    return 0


async def _measure(
    ready: list[bench.Adapter],
    adapters: list[bench.Adapter],
    settings: bench.Settings,
    results: dict[str, dict[str, Any]],
) -> None:
    try:
        _progress("uncontended ...")
        for name, figures in (await bench.uncontended(ready, settings.n, settings.repeats)).items():
            results[name]["uncontended"] = figures
        for a in adapters:
            for scenario in ("handoff", "manykeys", "fairness"):
                _progress(f"{scenario} on {a.name} ...")
                results[a.name][scenario] = await bench.run_scenario(a, scenario, settings)
    except AgentLocksError:
        raise
    except Exception as exc:
        # A floor's own driver failed (the server went away mid-run): one line, no
        # traceback; the driver's message is redacted like ours.
        raise BackendError(f"{type(exc).__name__}: {redact_url(str(exc))}") from exc


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit.startswith("of "):
        return f"{value:.0f} {unit}"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"


def _rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, float, str]]:
    rows: list[tuple[str, str, float, str]] = []  # (adapter, metric, value, unit)
    for name, r in results.items():
        if "uncontended" in r:
            rows.append((name, "uncontended acquire+release", r["uncontended"]["us_per_op"], "µs"))
        for hold, h in r.get("handoff", {}).items():
            rows.append((name, f"hand-off p50 ({hold})", h["cross_p50_us"], "µs"))
            rows.append((name, f"hand-off p99 ({hold})", h["cross_p99_us"], "µs"))
            rows.append((name, f"self-reacquire ({hold})", h["self_reacquire_frac"] * 100, "%"))
        if "manykeys" in r:
            rows.append((name, "many keys throughput", r["manykeys"]["ops_s"], "ops/s"))
        if "fairness" in r:
            f = r["fairness"]
            rows.append((name, "FIFO violations", f["violations"], f"of {f['grants']}"))
            rows.append((name, "queued hand-off p50", f["queued_handoff_p50_us"], "µs"))
    return rows


def _table(
    results: dict[str, dict[str, Any]], floor: str | None, rtt: str | None, plain: bool
) -> None:
    rows = _rows(results)
    by = {(name, metric): value for name, metric, value, _ in rows}
    out = []
    for name, metric, value, unit in rows:
        if name != "agentlocks":
            continue
        base = by.get((floor, metric), math.nan) if floor else math.nan
        ratio = value / base if base and not math.isnan(base) and unit in ("µs", "ops/s") else None
        if ratio is not None and unit == "ops/s":
            ratio = 1 / ratio  # "x floor" always reads: higher is worse
        net = by.get((rtt, metric), math.nan) if rtt else math.nan
        out.append([
            metric, _fmt(value, unit), _fmt(base, unit) if floor else "-",
            "-" if ratio is None else f"{ratio:.2f}x",
            "-" if math.isnan(net) else f"{value / net:.1f} RTT",
        ])  # fmt: skip
    floor_name = floor or "no floor"
    headers = ["scenario", "agentlocks", floor_name, "x floor (higher is worse)", "in round trips"]
    print_table(f"agentlocks bench: {results['agentlocks']['notes']}", headers, out, plain=plain)


def _plot(results: dict[str, dict[str, Any]], path: str, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = ["-", "--", ":", "-."]
    for n, name in enumerate(names):  # one colour per adapter, one line style per hold time
        for k, (hold, h) in enumerate(results[name].get("handoff", {}).items()):
            samples = sorted(h["samples_us"])
            if samples:
                ys = [(i + 1) / len(samples) for i in range(len(samples))]
                ax.step(
                    samples, ys, where="post", color=f"C{n}", linestyle=styles[k % 4],
                    label=f"{name}, {hold.removeprefix('hold')} hold",
                )  # fmt: skip
    ax.set_title(f"hand-off latency: {results[names[0]]['notes']}")
    ax.set_xscale("log")
    ax.set_xlabel("hand-off latency, release() call to next holder (µs)")
    ax.set_ylabel("fraction of hand-offs")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
