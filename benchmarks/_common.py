"""Shared helpers for the benchmark scripts in this folder.

Every script measures agentlocks with the scenarios of ``_peers.py`` (this folder; built on
``agentlocks._bench``, which ``agentlocks bench`` uses too). They are our own rewrite of the
shared peer benchmark's scenarios, with the same definitions and default counts, so the
numbers sit on the scale of the anchor numbers the comparison quotes. This module holds
what each script would otherwise copy:

* :func:`load_peer_bench` imports ``_peers.py`` (the name is historical).
* :class:`AgentlocksAdapter` drives any agentlocks URL through peer_bench's ``Adapter``
  interface (``name``, ``kind``, ``setup``/``teardown``, ``acquire(key)``/``release(handle)``).
* :func:`add_peer_arguments` / :func:`peer_args` give every script peer_bench's default
  parameters, a ``--quick`` variant and ``--rounds``; :func:`run_rounds` and
  :func:`uncontended_rounds` interleave the adapters round by round (the machine is
  noisy: compare the medians of interleaved rounds, and ratios taken within one round).
* :func:`markdown_table`, :func:`fmt`, :func:`fmt_ratio` and :class:`Target` print the report.

Use from a script in this folder (its directory is ``sys.path[0]``)::

    from _common import AgentlocksAdapter, load_peer_bench

    pb = load_peer_bench()
    adapters = [pb.RedisRawAdapter(), AgentlocksAdapter("redis://127.0.0.1:6391/0")]

"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import os
import statistics
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import agentlocks

__all__ = [
    "DEFAULT_ROUNDS",
    "PEER_DEFAULTS",
    "QUICK",
    "UNCONTENDED_ROUNDS_PER_ROUND",
    "AgentlocksAdapter",
    "PeerBenchMissing",
    "Target",
    "add_peer_arguments",
    "fmt",
    "fmt_ratio",
    "load_peer_bench",
    "markdown_table",
    "median",
    "peer_args",
    "peer_bench_path",
    "print_targets",
    "rotated",
    "rss_bytes",
    "run_rounds",
    "uncontended_rounds",
]

REPO = Path(__file__).resolve().parent.parent

#: The defaults of ``peer_bench.py``'s command line (its ``main()``), which PEERS.md used.
PEER_DEFAULTS: dict[str, Any] = {
    "n": 2000,  # uncontended: acquire+release per repeat
    "repeats": 3,  # uncontended: interleaved repeats, median taken
    "waiters": 8,  # handoff and fairness: tasks on one key
    "holds": [0.0, 1.0],  # handoff: hold times, ms
    "handoffs": 300,  # handoff: grants per hold time
    "handoff_cap": 15.0,  # handoff: seconds per hold time, at most
    "mk_tasks": 64,  # many keys: concurrent tasks
    "mk_keys": 1000,  # many keys: distinct keys
    "mk_total": 5000,  # many keys: acquire+release in all
    "mk_cap": 60.0,  # many keys: seconds, at most
    "fair_trials": 5,  # fairness: trials of `waiters` grants each
    "fair_stagger": 20.0,  # fairness: ms between waiter arrivals
    "fair_hold": 2.0,  # fairness: ms each waiter holds
}

#: Interleaved rounds of each contended scenario (handoff, manykeys, fairness).
DEFAULT_ROUNDS = 9
#: The uncontended scenario takes milliseconds per round and is the noisiest ratio (a
#: 0.5 µs floor), so it gets this many rounds per contended round.
UNCONTENDED_ROUNDS_PER_ROUND = 5

#: ``--quick``: the same scenarios with small counts (a smoke run, not a measurement).
QUICK: dict[str, Any] = {
    "n": 300,
    "repeats": 2,
    "handoffs": 60,
    "handoff_cap": 5.0,
    "mk_total": 1000,
    "mk_cap": 20.0,
    "fair_trials": 2,
    "fair_stagger": 5.0,
}


# --------------------------------------------------------------------------- peer_bench
class PeerBenchMissing(RuntimeError):
    """The scenarios module is missing from this folder (a broken checkout)."""


def peer_bench_path() -> Path:
    """The module holding the scenarios and peer adapters: ``benchmarks/_peers.py``."""
    return Path(__file__).resolve().parent / "_peers.py"


def load_peer_bench() -> ModuleType:
    """Import ``_peers.py`` (the scenarios, the floors and the peer libraries' adapters).

    It lives in this folder and builds on ``agentlocks._bench``, so nothing outside the
    repository is needed. (It replaced ``../shared/bench/peer_bench.py``, whose interface
    it keeps; hence the names.)

    Raises:
        PeerBenchMissing: ``_peers.py`` is not there.
    """
    loaded = sys.modules.get("_peers")
    if loaded is not None:
        return loaded
    path = peer_bench_path()
    if not path.is_file():
        raise PeerBenchMissing(f"{path} is missing: the checkout is incomplete")
    spec = importlib.util.spec_from_file_location("_peers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_peers"] = module  # registered first, as a normal import would be
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["_peers"]
        raise
    return module


# --------------------------------------------------------------------------- adapter
_KINDS = {
    "memory": "inproc",
    "redis": "redis",
    "rediss": "redis",
    "postgres": "pg",
    "postgresql": "pg",
}
_NAMES = {"inproc": "memory", "redis": "redis", "pg": "pg"}


class AgentlocksAdapter:
    """agentlocks on ``url`` behind peer_bench's ``Adapter`` interface (duck-typed).

    ``kind`` picks peer_bench's floor for ratios: ``"inproc"`` (asyncio-lock) for
    ``memory://``, ``"redis"`` (redis-raw-setnx) for ``redis(s)://``, ``"pg"``
    (pg-advisory-noreset) for ``postgres(ql)://``. Each adapter connects with its own
    namespace (``bench-<random>``, unless ``namespace=`` is given in ``options``), so runs
    never meet each other's keys on a shared server.

    Args:
        url: Any agentlocks URL (default ``memory://``).
        name: Row label in the tables (default ``agentlocks-memory``, ``-redis``, ``-pg``).
        kind: peer_bench kind, for a scheme not listed above (default ``"inproc"``).
        **options: Passed to ``agentlocks.connect`` (``lease_ttl=...``, ``redis=client``...).
    """

    scenarios = frozenset(("uncontended", "handoff", "manykeys", "fairness"))

    def __init__(
        self,
        url: str = "memory://",
        name: str | None = None,
        kind: str | None = None,
        **options: Any,
    ) -> None:
        scheme = url.partition("://")[0].lower()
        self.url = url
        self.kind = kind or _KINDS.get(scheme, "inproc")
        self.name = name or "agentlocks-" + (_NAMES[_KINDS[scheme]] if scheme in _KINDS else scheme)
        self.options = {"namespace": f"bench-{uuid.uuid4().hex[:8]}", **options}
        self.notes = f"agentlocks.connect({url!r}): await coord.acquire(key) / lease.release()"
        self.coord: Any = None

    async def setup(self) -> None:
        self.coord = agentlocks.connect(self.url, **self.options)

    async def teardown(self) -> None:
        if self.coord is not None:
            await self.coord.aclose()

    async def acquire(self, key: str) -> Any:
        return await self.coord.acquire(key)

    async def release(self, lease: Any) -> None:
        await lease.release()


# --------------------------------------------------------------------------- parameters
def add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--quick``, ``--rounds`` and peer_bench's scenario parameters to ``parser``."""
    parser.add_argument(
        "--quick", action="store_true", help="small counts: a smoke run, not a measurement"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds of the contended scenarios; medians are reported "
        f"(default {DEFAULT_ROUNDS}, --quick 1)",
    )
    parser.add_argument(
        "--uncontended-rounds",
        type=int,
        default=None,
        help="rounds of the uncontended scenario, which takes milliseconds per round "
        f"(default {UNCONTENDED_ROUNDS_PER_ROUND} x --rounds)",
    )
    for name, default in PEER_DEFAULTS.items():
        if name == "holds":
            continue
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(default), default=None, help=f"default {default}")


def peer_args(ns: argparse.Namespace) -> SimpleNamespace:
    """peer_bench's parameters (defaults, then ``--quick``, then explicit flags), plus
    ``rounds`` and ``uncontended_rounds``.

    The result has the attribute names peer_bench's ``run_scenario`` reads.
    """
    values = dict(PEER_DEFAULTS)
    if ns.quick:
        values.update(QUICK)
    for name in PEER_DEFAULTS:
        explicit = getattr(ns, name, None)
        if explicit is not None:
            values[name] = explicit
    rounds = max(1, ns.rounds if ns.rounds is not None else (1 if ns.quick else DEFAULT_ROUNDS))
    unc = getattr(ns, "uncontended_rounds", None) or UNCONTENDED_ROUNDS_PER_ROUND * rounds
    return SimpleNamespace(rounds=rounds, uncontended_rounds=max(1, unc), **values)


def rotated(items: Sequence[Any], r: int) -> list[Any]:
    """``items`` starting at index ``r`` (mod len): round ``r``'s running order."""
    k = r % len(items) if items else 0
    return [*items[k:], *items[:k]]


async def run_rounds(
    adapters: Sequence[Any],
    scenario: Callable[[Any], Awaitable[dict[str, Any]]],
    rounds: int,
) -> dict[str, list[dict[str, Any]]]:
    """Run ``scenario(adapter)`` ``rounds`` times per adapter, interleaved round-robin.

    Each round starts one adapter later than the previous one, so neither slow drift of a
    shared machine nor "who runs first" favours any adapter. Returns name -> results.
    Pair results by round index to compare adapters measured close together in time.
    """
    out: dict[str, list[dict[str, Any]]] = {a.name: [] for a in adapters}
    for r in range(rounds):
        for a in rotated(adapters, r):
            gc.collect()  # no collection of a previous adapter's garbage inside a timing
            out[a.name].append(await scenario(a))
    return out


async def uncontended_rounds(
    pb: ModuleType, adapters: Sequence[Any], n: int, repeats: int, rounds: int
) -> dict[str, list[dict[str, Any]]]:
    """peer_bench's ``sc_uncontended`` (itself interleaved) once per round, rotated order."""
    out: dict[str, list[dict[str, Any]]] = {a.name: [] for a in adapters}
    for r in range(rounds):
        gc.collect()
        for name, result in (await pb.sc_uncontended(rotated(adapters, r), n, repeats)).items():
            out[name].append(result)
    return out


# --------------------------------------------------------------------------- numbers
def median(xs: Iterable[float | None]) -> float:
    """Median of the finite values, NaN if there are none."""
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(vals) if vals else math.nan


def fmt(x: float | None, nd: int = 0) -> str:
    """``1,234.5``-style number; ``-`` for None or NaN (as in peer_bench's tables)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{nd}f}"


def fmt_ratio(x: float | None, nd: int = 2) -> str:
    """``1.23x``; ``-`` for None or NaN."""
    s = fmt(x, nd)
    return s if s == "-" else s + "x"


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None
) -> str:
    """A GitHub markdown table. ``align`` is one letter per column: ``l``, ``r`` or ``c``.

    By default the first column is left-aligned and the others right-aligned.
    """
    align = align or "l" + "r" * (len(headers) - 1)
    rule = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(rule[a] for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rss_bytes() -> int | None:
    """Resident set size of this process now, in bytes (None if it cannot be read)."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.Process().memory_info().rss)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True, slots=True)
class Target:
    """One performance target of an issue and whether this run met it.

    Attributes:
        name: What is measured and the limit, e.g. ``"uncontended <= 3x asyncio.Lock"``.
        met: Whether the measured value is within the limit (None: could not measure).
        detail: The measured numbers, e.g. ``"2.10x (1.3 us vs 0.6 us)"``.
    """

    name: str
    met: bool | None
    detail: str

    def line(self) -> str:
        """``[met]  name: detail``, or a loud ``[NOT MET]`` line with ``<<<`` markers."""
        if self.met is None:
            return f"[UNKNOWN] !!! {self.name}: {self.detail}  <<<"
        if self.met:
            return f"[met]     {self.name}: {self.detail}"
        return f"[NOT MET] !!! {self.name}: {self.detail}  <<< NOT MET"


def print_targets(title: str, targets: Sequence[Target]) -> int:
    """Print the target lines and a summary; return how many were not met."""
    missed = sum(1 for t in targets if not t.met)
    print(f"\n## {title}\n")
    print("```")
    for t in targets:
        print(t.line())
    print("```")
    if missed:
        print(f"\n**!!! {missed} of {len(targets)} targets NOT met !!!**")
    else:
        print(f"\nAll {len(targets)} targets met.")
    return missed


def per_round_ratios(
    rows: dict[str, list[dict[str, Any]]], name: str, floor: str, get: Any
) -> list[float]:
    """``get(name's result) / get(floor's result)`` for each round, pairing results by round.

    Rounds where either side has no figure (a failed run) are left out.
    """
    out = []
    for mine, base in zip(rows.get(name, []), rows.get(floor, []), strict=False):
        x, b = get(mine), get(base)
        if x is not None and b:
            out.append(x / b)
    return out


def spread(xs: list[float]) -> str:
    """The range of per-round ratios, e.g. ``2.10..2.45``."""
    return f"{min(xs):.2f}..{max(xs):.2f}" if xs else "-"
