"""The ``agentlocks`` command (also ``python -m agentlocks``): inspect, bench, demo.

Exit codes: 0 success, 1 a runtime failure (bad URL, unreachable server: one line on
stderr, never a traceback or a password), 2 a usage error (one line), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .errors import AgentLocksError

__all__ = ["main"]

PROG = "agentlocks"


_DEMO_HELP = (
    "Start a real FastAPI + LangGraph agent and drive it with simulated users, unguarded "
    "then guarded by agentlocks (needs agentlocks[demo]). Example: agentlocks demo --quick"
)


class UsageError(Exception):
    """A command line argparse rejected (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``agentlocks inspect: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def _parser() -> _Parser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        formatter_class=raw,
        description="Fair, fenced, cancellation-safe locks for asyncio: look inside a "
        "backend, measure it, or watch the demo.",
        epilog="examples:\n"
        "  agentlocks inspect redis://localhost:6379/0 thread:\n"
        "  agentlocks bench memory://\n"
        "  agentlocks demo --quick\n\n"
        "Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show the library's log lines (-v warnings, -vv info)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    inspect = commands.add_parser(
        "inspect",
        formatter_class=raw,
        help="show holders and waiters of the keys in use",
        description="Show every lock key and semaphore in use in a namespace: its holders "
        "(fencing token, mode, age) and how many requests wait.\n\n"
        "Redis lists keys with SCAN (never KEYS). PostgreSQL keeps no key names: pass an "
        "exact key to see it, other advisory locks are listed by key. memory:// is "
        "in-process, so from this separate process it always looks empty.",
        epilog="examples:\n"
        "  agentlocks inspect redis://localhost:6379/0\n"
        "  agentlocks inspect 'redis://localhost:6379/0?namespace=billing' thread:\n"
        "  agentlocks inspect postgresql://app@db/app thread:42 --json\n"
        "  agentlocks inspect redis://localhost:6379/0 --watch 2",
    )
    inspect.add_argument("url", metavar="URL", help="backend URL, as for agentlocks.connect()")
    inspect.add_argument(
        "prefix", metavar="KEY_PREFIX", nargs="?", default="", help="only keys starting so"
    )
    inspect.add_argument("--namespace", help="namespace (default: the URL's, else agentlocks)")
    inspect.add_argument("--json", action="store_true", help="print one JSON document")
    inspect.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=1.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 1) until Ctrl-C",
    )
    inspect.add_argument(
        "--idle", action="store_true", help="also list keys used recently but now free"
    )
    inspect.add_argument("--plain", action="store_true", help="plain text even if rich is there")

    bench = commands.add_parser(
        "bench",
        formatter_class=raw,
        help="measure a backend next to its raw floor",
        description="Run the benchmark scenarios (uncontended, hand-off, many keys, fairness) "
        "against a backend, next to the raw floor of that backend (asyncio.Lock, SET NX + "
        "compare-and-delete, pg_advisory_lock), and print a table. Keys live in a fresh "
        "namespace and expire by themselves.",
        epilog="examples:\n"
        "  agentlocks bench memory://\n"
        "  agentlocks bench redis://localhost:6379/0 --quick\n"
        "  agentlocks bench postgresql://app@db/app --plot handoff.png   # needs matplotlib",
    )
    bench.add_argument("url", metavar="URL", help="backend URL, as for agentlocks.connect()")
    bench.add_argument("--quick", action="store_true", help="small counts (a few seconds)")
    bench.add_argument("--plot", metavar="FILE.png", help="plot hand-off latency (matplotlib)")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--plain", action="store_true", help="plain text even if rich is there")

    commands.add_parser(
        "demo",
        add_help=False,
        help="run the FastAPI + LangGraph demo (agentlocks[demo])",
        description=_DEMO_HELP,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:1] == ["demo"]:
            return _demo(args_list[1:])
        args = _parser().parse_args(args_list)
        _logging(args.verbose)
        if args.command is None:
            raise UsageError(
                f"{PROG}: error: a command is required: inspect, bench or demo "
                f"(see '{PROG} --help')"
            )
        if args.command == "inspect":
            from ._cli_inspect import run_inspect

            return asyncio.run(run_inspect(args))
        from ._cli_bench import run_bench

        return asyncio.run(run_bench(args))
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except AgentLocksError as exc:
        # Library messages never carry a password (API.md); the driver error (the cause)
        # may, so it is never printed.
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _logging(verbose: int) -> None:
    # The library's warnings (a withdrawal that failed while the server was down, ...) would
    # repeat the one-line error; they are shown on request only.
    level = {0: logging.ERROR, 1: logging.WARNING}.get(verbose, logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    logger = logging.getLogger("agentlocks")
    logger.addHandler(handler)
    logger.setLevel(level)


def _demo(argv: list[str]) -> int:
    # Imported lazily: the demo needs agentlocks[demo] (fastapi, uvicorn, langgraph, ...).
    try:
        demo = importlib.import_module("agentlocks._demo")
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("agentlocks._demo"):
            missing = exc.name or "a dependency"
            print(
                f"{PROG}: error: the demo needs {missing}: pip install 'agentlocks[demo]'",
                file=sys.stderr,
            )
            return 1
        if "-h" in argv or "--help" in argv:
            print(f"usage: {PROG} demo [options]\n\n{_DEMO_HELP}\n")
        print(f"{PROG}: error: the demo is not installed", file=sys.stderr)
        return 1
    code: int = demo.main(argv)
    return code
