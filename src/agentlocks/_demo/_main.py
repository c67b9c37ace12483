"""``agentlocks demo``: parse the command line, start the replicas, run twice, judge.

The unguarded and the guarded fleets start together (their imports overlap), then the same
traffic runs against each in turn; the result table and the verdict follow. Exit status: 0
when the guarded run lost nothing, 1 when it did (or the demo could not run), 2 on a usage
error.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys

from ._display import make_display
from ._scenario import FULL, QUICK

__all__ = ["main"]

_DESCRIPTION = """\
Start a real FastAPI + LangGraph agent (a tool-calling StateGraph whose model is a scripted
delay: no LLM, no network) under uvicorn, drive it over HTTP with simulated users (parallel
conversations, double-texts, a burst above capacity), once unguarded and once guarded by
agentlocks, and compare what the conversations kept.
"""

_EPILOG = """\
examples:
  agentlocks demo                                   one replica, memory://
  agentlocks demo --strategy reject                 double-texts answered 409
  agentlocks demo --url redis://localhost:6379/0 --replicas 3
  agentlocks demo --url postgresql://app@localhost/app --replicas 2

exit status: 0 when the guarded run lost nothing; 1 when it lost something, or the demo
could not run (bad URL, unreachable server, missing package); 2 on a usage error.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentlocks demo",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("AGENTLOCKS_URL", "memory://"),
        help="the lock backend: memory://, redis://..., postgresql://... "
        "(default: $AGENTLOCKS_URL, else memory://). With PostgreSQL the checkpoints go "
        "there too (AsyncPostgresSaver), otherwise to an AsyncSqliteSaver file",
    )
    parser.add_argument(
        "--replicas",
        type=_positive,
        default=1,
        help="uvicorn processes per run, sharing the backend and the checkpointer (default 1)",
    )
    parser.add_argument(
        "--strategy",
        choices=("enqueue", "reject", "interrupt"),
        default="enqueue",
        help="what a double-text does in the guarded run: wait its turn (enqueue), get 409 "
        "(reject), or stop the running turn at its next step (interrupt); default enqueue",
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds of traffic (tests)")
    parser.add_argument("--plain", action="store_true", help="plain lines, no rich output")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= 16:
        raise argparse.ArgumentTypeError(f"expected 1 to 16, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit status (0: the guarded run lost nothing)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, message already printed)
        return int(exc.code or 0)
    display = make_display(args.plain)
    missing = _missing(args.url)
    if missing:
        _error(f"needs {', '.join(missing)}: pip install 'agentlocks[demo]'")
        return 1
    from ._run import DemoError, run

    scenario = QUICK if args.quick else FULL
    try:
        return asyncio.run(run(display, args.url, args.replicas, args.strategy, scenario))
    except DemoError as exc:
        _error(str(exc))
        return exc.status
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> None:
    print(f"agentlocks demo: {message}", file=sys.stderr, flush=True)


def _missing(url: str) -> list[str]:
    modules = {
        "fastapi": "fastapi",
        "uvicorn": "uvicorn",
        "httpx": "httpx",
        "langgraph": "langgraph",
        "langgraph.checkpoint.sqlite": "langgraph-checkpoint-sqlite",
        "aiosqlite": "aiosqlite",
    }
    if url.lower().startswith("postgres"):
        modules["langgraph.checkpoint.postgres"] = "langgraph-checkpoint-postgres"
        modules["psycopg"] = "psycopg"
    out = []
    for module, package in modules.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            out.append(package)
    return out
