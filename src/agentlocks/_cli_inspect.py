"""``agentlocks inspect URL [KEY_PREFIX]``: the keys in use, their holders and waiters."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from ._cli_output import has_rich, print_table
from ._survey import Survey, mode, survey
from .coordinator import connect

__all__ = ["render", "run_inspect"]


async def run_inspect(args: argparse.Namespace) -> int:
    """Print one survey (or refresh it every ``--watch`` seconds until Ctrl-C)."""
    coord = connect(args.url, namespace=args.namespace)
    async with coord:
        if args.watch is None:
            report = await survey(coord, args.prefix, idle=args.idle)
            _print(report, args)
            return 0
        if args.watch <= 0:
            from .cli import UsageError

            raise UsageError("agentlocks inspect: error: --watch takes a positive number")
        try:
            while True:
                report = await survey(coord, args.prefix, idle=args.idle)
                if not args.json and sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")  # home + clear: redraw in place
                _print(report, args)
                sys.stdout.flush()
                await asyncio.sleep(args.watch)
        except asyncio.CancelledError:  # Ctrl-C under asyncio.run
            return 0


def _print(report: Survey, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(report.as_json()))
        return
    render(report, plain=args.plain or not has_rich())


def render(report: Survey, *, plain: bool = False) -> None:
    """Print a survey as tables."""
    title = f"{report.url}  namespace={report.namespace!r}"
    rows = []
    for entry in report.entries:
        holders = [f"{h.token} {mode(entry.kind, h)} {h.age:.1f}s" for h in entry.holders]
        rows.append(
            [entry.key, entry.kind, str(len(entry.holders)), str(entry.waiting),
             ", ".join(holders) or "-"]
        )  # fmt: skip
    if rows:
        headers = ["key", "kind", "holders", "waiting", "token mode age"]
        print_table(title, headers, rows, plain=plain)
    else:
        print(f"{title}: no key is held or waited for")
    if report.advisory:
        adv = [
            [a.get("name") or f"{a['key']:#x}", str(a["pid"]), "holds" if a["granted"] else "waits",
             "shared" if a["shared"] else "exclusive", a["application"] or "-",
             "-" if a["waited"] is None else f"{a['waited']:.1f}s"]
            for a in report.advisory
        ]  # fmt: skip
        headers = ["advisory key (or name)", "pid", "state", "mode", "application", "waited"]
        print_table("PostgreSQL advisory locks (by key)", headers, adv, plain=plain)
    for note in report.notes:
        print(f"note: {note}")
