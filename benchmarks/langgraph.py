"""LangGraph runs guarded by agentlocks against the same runs unguarded, in one process and one run.

A 3-node graph (no LLM: each node appends one entry to a list) runs

1. **throughput**: ``--threads`` threads (default 64) at once, each receiving ``--runs`` runs
   (default 10) one after the other, as 64 users each sending 10 messages, every message
   after the previous answer. Runs of different threads overlap; the thread lock is never
   contended, so the ratio is the guard's cost: ``guard_checkpointer`` (a head swap per
   checkpoint put) plus ``guard_graph`` (``on_busy="enqueue"``: the lock for the run).
   A control, ``yielding`` (the unguarded graph behind one ``await asyncio.sleep(0)``),
   shows what the one turn of the event loop a guarded run cannot avoid costs here; the
   client's CPU time per run is printed beside the wall clock.
2. **double-texts**: ``--double-texts`` runs (default 20) sent at once to ONE thread. Guarded,
   they take turns (FIFO) and keep every message; unguarded they run concurrently and the
   thread keeps only the last writer's chain: the table says how many turns it lost.
3. **added latency**: one run at a time, guarded and unguarded alternating, ``--latency-runs``
   each (default 200, over 10 threads): p50 and p99 of a run's wall time, and the difference.

per backend: ``InMemorySaver`` + ``memory://``; ``AsyncPostgresSaver`` + ``postgresql://``
(the coordinator on the same PostgreSQL); ``AsyncPostgresSaver`` + ``redis://``. Each
scenario runs in ``--rounds`` interleaved rounds (the starting variant alternates; the
machine is noisy); figures are medians over rounds and ratios are taken within one round.
Then the targets of issue 9 ("Performance") are printed as met / NOT MET.

Servers (nothing is started here): PostgreSQL from ``--dsn``, else
``$AGENTLOCKS_TEST_POSTGRES_URL`` (so it runs inside ``scripts/test``'s environment); Redis
from ``--redis-url``, else ``$AGENTLOCKS_TEST_REDIS_URL``. A backend whose server is not
given is skipped with a line saying so; ``memory://`` always runs.

Usage::

    .venv/bin/python benchmarks/langgraph.py                      # memory:// only, ~1 min
    .venv/bin/python benchmarks/langgraph.py --dsn postgresql://postgres@127.0.0.1:5432/db \\
        --redis-url redis://127.0.0.1:6379/0                      # all three backends
    .venv/bin/python benchmarks/langgraph.py --quick              # small counts (a smoke run)

Prints markdown. Exits 0 even when a target is missed (it is a report); missed targets are
printed as ``[NOT MET] !!!`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import operator
import os
import platform
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Annotated, Any, TypedDict

from _common import (
    Target,
    fmt,
    fmt_ratio,
    markdown_table,
    median,
    print_targets,
    rotated,
    spread,
)

# This file is langgraph.py and its folder is sys.path[0]: a module beats the namespace
# package ``langgraph`` wherever it sits on the path. Imported _common above, then the
# folder leaves the path, and ``langgraph`` is the real package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

from langgraph.checkpoint.base import BaseCheckpointSaver  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402

import agentlocks  # noqa: E402
from agentlocks.langgraph import guard_checkpointer, guard_graph  # noqa: E402

perf = time.perf_counter

# Issue 9, "Performance": guarded throughput over unguarded, at least.
MIN_RATIO = {"memory": 0.95, "postgres": 0.9, "redis": 0.9}

FULL: dict[str, int] = {
    "threads": 64,
    "runs": 10,
    "double_texts": 20,
    "latency_runs": 200,
    "rounds": 9,
}
QUICK: dict[str, int] = {
    "threads": 8,
    "runs": 3,
    "double_texts": 5,
    "latency_runs": 10,
    "rounds": 1,
}
LATENCY_THREADS = 10  # the latency runs rotate over this many threads (state stays small)


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout is the markdown report alone."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the graph
class State(TypedDict):
    log: Annotated[list[str], operator.add]


def _node(name: str) -> Callable[[State], Any]:
    async def node(state: State) -> dict[str, list[str]]:
        return {"log": [name]}

    node.__name__ = name
    return node


def build() -> Any:
    """START -> a -> b -> c -> END; the input and each node append one entry (4 per run)."""
    builder = StateGraph(State)
    for name in ("a", "b", "c"):
        builder.add_node(name, _node(name))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", "c")
    builder.add_edge("c", END)
    return builder


ENTRIES_PER_RUN = 4


def turn(i: int) -> dict[str, list[str]]:
    """The input of run ``i``: one user entry ``user-<i>``."""
    return {"log": [f"user-{i}"]}


# --------------------------------------------------------------------------- backends
@dataclass
class Backend:
    """One saver + coordinator pairing; ``graphs()`` gives both variants on a fresh saver."""

    name: str  # memory / postgres / redis
    label: str
    coord: agentlocks.Coordinator
    saver: BaseCheckpointSaver[Any] | None  # shared (PostgreSQL); None: a new InMemorySaver
    builder: Any = field(default_factory=build)

    def graphs(self) -> dict[str, Any]:
        """``{"unguarded", "yielding", "guarded"}`` graphs, all on the same kind of saver."""
        out: dict[str, Any] = {}
        raw = self.saver or InMemorySaver()
        out["unguarded"] = self.builder.compile(checkpointer=raw)
        out["yielding"] = Yielding(self.builder.compile(checkpointer=self.saver or InMemorySaver()))
        inner = self.saver or InMemorySaver()
        compiled = self.builder.compile(checkpointer=guard_checkpointer(inner, self.coord))
        out["guarded"] = guard_graph(compiled, self.coord, on_busy="enqueue")
        return out


class Yielding:
    """The unguarded graph behind one turn of the event loop and nothing else (a control).

    A guarded run runs LangGraph in a task of its own (``_holding.py``: the loop is then
    cancelled at most once), so between one run's end and the next run's start the caller
    gives the event loop at least one turn. On this workload that alone changes the garbage
    collector's rhythm: counted with ``gc.callbacks`` per 640 runs on ``InMemorySaver``,
    160 young-generation and 2 full collections back to back, 267-269 and 3 with one
    ``await asyncio.sleep(0)`` per run, the same as guarded (an ``async def`` or a plain
    function in between, with no turn of the loop, keeps 160). This row shows what that
    turn costs without any of the guard's work; the table prints the counts.
    """

    def __init__(self, graph: Any) -> None:
        self._graph = graph

    async def ainvoke(self, input: Any, config: Any = None) -> Any:
        await asyncio.sleep(0)
        return await self._graph.ainvoke(input, config)

    async def aget_state(self, config: Any) -> Any:
        return await self._graph.aget_state(config)


@contextlib.asynccontextmanager
async def pg_saver(dsn: str, pool_size: int) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """An ``AsyncPostgresSaver`` on a psycopg pool (one connection would serialise the runs)."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(
        dsn, min_size=pool_size, max_size=pool_size, kwargs=kwargs, open=False
    ) as pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        yield saver


@contextlib.asynccontextmanager
async def open_backends(ns: argparse.Namespace, skipped: list[str]) -> AsyncIterator[list[Backend]]:
    namespace = f"bench-lg-{uuid.uuid4().hex[:8]}"
    wanted = set(ns.backends.split(","))
    async with contextlib.AsyncExitStack() as stack:
        out: list[Backend] = []
        if "memory" in wanted:
            coord = await stack.enter_async_context(agentlocks.connect("memory://"))
            out.append(Backend("memory", "InMemorySaver + memory://", coord, None))
        saver = None
        if {"postgres", "redis"} & wanted:
            if ns.dsn:
                saver = await stack.enter_async_context(pg_saver(ns.dsn, ns.pool_size))
            else:
                skipped.append("AsyncPostgresSaver: no --dsn (or $AGENTLOCKS_TEST_POSTGRES_URL)")
        if saver is not None and "postgres" in wanted:
            coord = await stack.enter_async_context(agentlocks.connect(ns.dsn, namespace=namespace))
            out.append(Backend("postgres", "AsyncPostgresSaver + postgresql://", coord, saver))
        if saver is not None and "redis" in wanted:
            if ns.redis_url:
                coord = await stack.enter_async_context(
                    agentlocks.connect(ns.redis_url, namespace=namespace)
                )
                out.append(Backend("redis", "AsyncPostgresSaver + redis://", coord, saver))
            else:
                skipped.append("redis://: no --redis-url (or $AGENTLOCKS_TEST_REDIS_URL)")
        yield out


# --------------------------------------------------------------------------- scenarios
def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``xs``, nearest rank; NaN if empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


async def kept(graph: Any, thread_id: str) -> list[str]:
    """The thread's final list (read through the graph; outside any timing)."""
    state = await graph.aget_state(config(thread_id))
    return list(state.values.get("log", []))


async def sc_throughput(graph: Any, threads: int, runs: int) -> dict[str, Any]:
    """``threads`` threads at once, ``runs`` sequential runs each; runs/s and run latency."""
    tag = uuid.uuid4().hex[:8]
    latencies: list[float] = []

    async def one_thread(t: int) -> None:
        cfg = config(f"tp-{tag}-{t}")
        for i in range(runs):
            t0 = perf()
            await graph.ainvoke(turn(i), cfg)
            latencies.append(perf() - t0)

    gc.collect()
    collections = [0, 0, 0]  # collections of each generation during the runs

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            collections[info["generation"]] += 1

    gc.callbacks.append(count)
    cpu0 = time.process_time()
    t0 = perf()
    try:
        await asyncio.gather(*(one_thread(t) for t in range(threads)))
    finally:
        wall = perf() - t0
        cpu = time.process_time() - cpu0  # this process (the client), every thread of it
        gc.callbacks.remove(count)
    # Sequential runs lose nothing, guarded or not: a check that both did the same work.
    complete = 0
    for t in range(threads):
        complete += len(await kept(graph, f"tp-{tag}-{t}")) == runs * ENTRIES_PER_RUN
    return {
        "runs_s": threads * runs / wall,
        "wall_s": wall,
        "cpu_ms": cpu / (threads * runs) * 1e3,
        "p50_ms": pct(latencies, 0.5) * 1e3,
        "p99_ms": pct(latencies, 0.99) * 1e3,
        "complete": complete,
        "threads": threads,
        "gc_young": collections[0],
        "gc_full": collections[2],
    }


async def sc_double_text(graph: Any, n: int) -> dict[str, Any]:
    """``n`` runs sent at once to one thread: runs/s and what the thread kept."""
    thread_id = f"dt-{uuid.uuid4().hex[:8]}"
    cfg = config(thread_id)
    gc.collect()
    t0 = perf()
    results = await asyncio.gather(
        *(graph.ainvoke(turn(i), cfg) for i in range(n)), return_exceptions=True
    )
    wall = perf() - t0
    errors = [r for r in results if isinstance(r, BaseException)]
    entries = await kept(graph, thread_id)
    turns = {e for e in entries if e.startswith("user-")}
    return {
        "runs_s": n / wall,
        "wall_s": wall,
        "turns_kept": len(turns),
        "entries_kept": len(entries),
        "errors": len(errors),
        "n": n,
    }


async def sc_latency(graphs: dict[str, Any], n: int) -> dict[str, dict[str, Any]]:
    """One run at a time, the variants alternating run by run; per-variant run latencies."""
    tag = uuid.uuid4().hex[:8]
    names = list(graphs)
    lat: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    for i in range(n):
        for name in rotated(names, i):
            cfg = config(f"lat-{tag}-{name}-{i % LATENCY_THREADS}")
            t0 = perf()
            await graphs[name].ainvoke(turn(i), cfg)
            lat[name].append(perf() - t0)
    return {
        name: {"p50_ms": pct(xs, 0.5) * 1e3, "p99_ms": pct(xs, 0.99) * 1e3, "n": len(xs)}
        for name, xs in lat.items()
    }


VARIANTS = ("unguarded", "guarded")
#: The throughput scenario also runs the control (``Yielding``); the targets ignore it.
THROUGHPUT_VARIANTS = ("unguarded", "yielding", "guarded")


async def measure(backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    """Every scenario on ``backend``, ``args.rounds`` interleaved rounds."""
    tp: dict[str, list[dict[str, Any]]] = {v: [] for v in THROUGHPUT_VARIANTS}
    dt: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    lat: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    # A warm-up (imports, prepared statements, pools, first-use paths), not reported.
    warm = backend.graphs()
    for v in THROUGHPUT_VARIANTS:
        await sc_throughput(warm[v], min(4, args.threads), 2)
    for r in range(args.rounds):
        t0 = perf()
        graphs = backend.graphs()
        for v in rotated(THROUGHPUT_VARIANTS, r):
            tp[v].append(await sc_throughput(graphs[v], args.threads, args.runs))
        for v in rotated(VARIANTS, r):
            dt[v].append(await sc_double_text(graphs[v], args.double_texts))
        latency = await sc_latency({v: graphs[v] for v in VARIANTS}, args.latency_runs)
        for v, res in latency.items():
            lat[v].append(res)
        log(f"  {backend.name:8s} round {r + 1}/{args.rounds}  {perf() - t0:5.1f} s")
    return {"throughput": tp, "double_text": dt, "latency": lat}


def ratios(
    rows: dict[str, list[dict[str, Any]]], key: str, variant: str = "guarded"
) -> list[float]:
    """``variant`` / unguarded ``key`` per round."""
    return [
        g[key] / u[key] for g, u in zip(rows[variant], rows["unguarded"], strict=True) if u[key]
    ]


# --------------------------------------------------------------------------- report
def report(
    results: dict[str, Any], backends: list[Backend], args: argparse.Namespace
) -> list[Target]:
    targets: list[Target] = []
    by_name = {b.name: b for b in backends}

    print(
        f"\n## 1. Throughput ({args.threads} threads at once x {args.runs} sequential runs "
        f"each, 3-node graph; {args.rounds} round(s))\n"
    )
    rows = []
    for name, m in results.items():
        tp = m["throughput"]
        xs = ratios(tp, "runs_s")
        for v in THROUGHPUT_VARIANTS:
            rs = tp[v]
            vx = ratios(tp, "runs_s", v) if v != "unguarded" else []
            rows.append([
                by_name[name].label, v + (" (control)" if v == "yielding" else ""),
                fmt(median(r["runs_s"] for r in rs)),
                f"{fmt(median(r['p50_ms'] for r in rs), 1)} / "
                f"{fmt(median(r['p99_ms'] for r in rs), 1)}",
                fmt(median(r["cpu_ms"] for r in rs), 2),
                f"{fmt(median(r['gc_young'] for r in rs))} / "
                f"{fmt(median(r['gc_full'] for r in rs))}",
                f"{min(r['complete'] for r in rs)}/{rs[0]['threads']}",
                fmt_ratio(median(vx)) if vx else "1.00x",
                spread(vx) if vx else "",
            ])  # fmt: skip
        limit = MIN_RATIO[name]
        g = median(r["runs_s"] for r in tp["guarded"])
        u = median(r["runs_s"] for r in tp["unguarded"])
        targets.append(
            Target(
                f"{by_name[name].label}: guarded throughput >= {limit:g}x unguarded",
                median(xs) >= limit,
                f"{median(xs):.2f}x ({g:,.0f} vs {u:,.0f} runs/s; per round {spread(xs)})",
            )
        )
    print(markdown_table(
        ["saver + coordinator", "variant", "runs/s", "run p50 / p99 ms",
         "client CPU ms/run", "GC young / full collections", "threads complete",
         "x unguarded", "per-round x"], rows,
    ))  # fmt: skip

    print(
        f"\n## 2. One double-texted thread ({args.double_texts} runs sent at once to one "
        f"thread; {args.rounds} round(s))\n"
    )
    rows = []
    for name, m in results.items():
        dt = m["double_text"]
        for v in VARIANTS:
            rs = dt[v]
            n = rs[0]["n"]
            worst = min(r["turns_kept"] for r in rs)
            lost = n - worst
            rows.append([
                by_name[name].label,
                v + (" (enqueue)" if v == "guarded" else " (wrong)"),
                fmt(median(r["runs_s"] for r in rs)),
                f"{worst}/{n}",
                f"{lost} ({lost / n:.0%})" if lost else "0",
                str(sum(r["errors"] for r in rs)),
            ])  # fmt: skip
        g = dt["guarded"]
        lost_g = sum(r["n"] - r["turns_kept"] for r in g)
        entries_ok = all(r["entries_kept"] == r["n"] * ENTRIES_PER_RUN for r in g)
        targets.append(
            Target(
                f"{by_name[name].label}: guarded double-texts lose no message",
                lost_g == 0 and entries_ok and not any(r["errors"] for r in g),
                f"{lost_g} turns lost in {len(g)} round(s) of {g[0]['n']}; the unguarded "
                f"runs lost {max(r['n'] - r['turns_kept'] for r in dt['unguarded'])} at worst",
            )
        )
    print(markdown_table(
        ["saver + coordinator", "variant", "runs/s", "turns kept (worst round)",
         "turns lost", "errors"], rows,
    ))  # fmt: skip

    print(
        f"\n## 3. Added latency per run (one run at a time, the variants alternating; "
        f"{args.latency_runs} runs each per round, {args.rounds} round(s))\n"
    )
    rows = []
    for name, m in results.items():
        lat = m["latency"]
        p = {v: {q: median(r[q] for r in lat[v]) for q in ("p50_ms", "p99_ms")} for v in VARIANTS}
        rows.append([
            by_name[name].label,
            f"{fmt(p['unguarded']['p50_ms'], 2)} / {fmt(p['unguarded']['p99_ms'], 2)}",
            f"{fmt(p['guarded']['p50_ms'], 2)} / {fmt(p['guarded']['p99_ms'], 2)}",
            f"{fmt(p['guarded']['p50_ms'] - p['unguarded']['p50_ms'], 2)} / "
            f"{fmt(p['guarded']['p99_ms'] - p['unguarded']['p99_ms'], 2)}",
            fmt_ratio(p["guarded"]["p50_ms"] / p["unguarded"]["p50_ms"]),
        ])  # fmt: skip
    print(markdown_table(
        ["saver + coordinator", "unguarded p50 / p99 ms", "guarded p50 / p99 ms",
         "added p50 / p99 ms", "p50 x unguarded"], rows,
    ))  # fmt: skip
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts: a smoke run, not a measurement"
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("AGENTLOCKS_TEST_POSTGRES_URL"),
        help="PostgreSQL URL: the AsyncPostgresSaver and the postgresql:// coordinator "
        "(default $AGENTLOCKS_TEST_POSTGRES_URL; none: skipped)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("AGENTLOCKS_TEST_REDIS_URL"),
        help="Redis URL for the redis:// coordinator, with the AsyncPostgresSaver "
        "(default $AGENTLOCKS_TEST_REDIS_URL; none: skipped)",
    )
    parser.add_argument(
        "--backends",
        default="memory,postgres,redis",
        help="comma-separated subset of memory,postgres,redis (default: all that have a server)",
    )
    parser.add_argument(
        "--pool-size", type=int, default=16, help="AsyncPostgresSaver pool connections (16)"
    )
    for name, default in FULL.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=None,
            help=f"default {default} (--quick {QUICK[name]})",
        )
    ns = parser.parse_args()
    for name in FULL:
        if getattr(ns, name) is None:
            setattr(ns, name, (QUICK if ns.quick else FULL)[name])
    unknown = set(ns.backends.split(",")) - set(MIN_RATIO)
    if unknown:
        parser.error(f"unknown backend(s) {sorted(unknown)}: use memory, postgres, redis")

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load0 = os.getloadavg()
    t0 = perf()
    skipped: list[str] = []

    async def run() -> tuple[list[Backend], dict[str, Any]]:
        async with open_backends(ns, skipped) as backends:
            results = {}
            for b in backends:
                log(f"measuring {b.label} ...")
                results[b.name] = await measure(b, ns)
            return backends, results

    backends, results = asyncio.run(run())
    print("# LangGraph runs: guard_checkpointer + guard_graph vs unguarded\n")
    print(
        f"- started {started}, wall {perf() - t0:.0f} s; load average {load0[0]:.2f} at "
        f"start, {os.getloadavg()[0]:.2f} at end ({os.cpu_count()} CPUs)"
    )
    print(
        f"- Python {platform.python_version()}, langgraph {version('langgraph')}, "
        f"langgraph-checkpoint {version('langgraph-checkpoint')}, agentlocks "
        f'{version("agentlocks")}; on_busy="enqueue", default durability ("async")'
    )
    print(
        f"- {ns.rounds} interleaved round(s) per scenario; figures are medians over rounds, "
        "`x` columns the median of per-round guarded/unguarded ratios"
    )
    for line in skipped:
        print(f"- skipped: {line}")
    targets = report(results, backends, ns)
    print_targets("Targets (issue 9)", targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
