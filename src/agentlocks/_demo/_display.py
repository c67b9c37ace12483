"""Live progress and the result table: with ``rich`` on a terminal, plain lines otherwise.

``rich`` is optional (it comes with ``agentlocks[demo]``); without it, or when stdout is not
a terminal (a pipe, a test), the demo prints plain lines and a plain aligned table, which
is also what scripts parse.
"""

from __future__ import annotations

import contextlib
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ._load import Outcome
from ._report import COLUMNS, Result

__all__ = ["Display", "make_display"]


def _counts(seen: Counter[str]) -> str:
    return (
        f"ok {seen['ok'] + seen['interrupted']}  409 {seen['409']}  503 {seen['503']}  "
        f"failed {seen['failed']}"
    )


class Display:
    """Plain lines on stdout."""

    def say(self, text: str = "") -> None:
        """Print one line."""
        print(text, flush=True)

    def note(self, label: str, text: str) -> None:
        """A labelled paragraph, wrapped under its label."""
        self.say(
            textwrap.fill(text, 100, initial_indent=f"  {label:<8} ", subsequent_indent=" " * 11)
        )

    def verdict(self, text: str, ok: bool) -> None:
        """The one-line verdict."""
        self.say(text)

    @contextlib.contextmanager
    def progress(self, label: str, total: int) -> Iterator[Callable[[Outcome], None]]:
        """Report a run's answers as they arrive (at most a line a second)."""
        seen: Counter[str] = Counter()
        last = time.monotonic()

        def update(outcome: Outcome) -> None:
            nonlocal last
            seen[outcome.kind] += 1
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                self.say(f"  {label:<9} {sum(seen.values()):>3}/{total}  {_counts(seen)}")

        yield update
        self.say(f"  {label:<9} {sum(seen.values()):>3}/{total}  {_counts(seen)}  done")

    def table(self, results: Sequence[Result]) -> None:
        """The result table, columns aligned."""
        rows = [list(COLUMNS), *(r.row() for r in results)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        for row in rows:
            cells = [
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            self.say("  " + "  ".join(cells))


class RichDisplay(Display):
    """A progress bar per run and a rich table."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()

    def say(self, text: str = "") -> None:
        self.console.print(text, highlight=False, markup=False)

    def note(self, label: str, text: str) -> None:
        from rich.padding import Padding
        from rich.text import Text

        self.console.print(Padding(Text(f"{label}  {text}", style="dim"), (0, 0, 0, 2)))

    def verdict(self, text: str, ok: bool) -> None:
        self.console.print(
            text, style="bold green" if ok else "bold red", highlight=False, markup=False
        )

    @contextlib.contextmanager
    def progress(self, label: str, total: int) -> Iterator[Callable[[Outcome], None]]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        seen: Counter[str] = Counter()
        columns: list[Any] = [
            TextColumn(f"  {label:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(label, total=total, counts=_counts(seen))

            def update(outcome: Outcome) -> None:
                seen[outcome.kind] += 1
                bar.update(task, advance=1, counts=_counts(seen))

            yield update

    def table(self, results: Sequence[Result]) -> None:
        from rich import box
        from rich.table import Table

        table = Table(
            title="messages expected vs kept, answers, latency",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            collapse_padding=True,
        )
        for i, name in enumerate(COLUMNS):
            table.add_column(name, justify="left" if i == 0 else "right")
        for result in results:
            style = "green" if result.clean else "red"
            table.add_row(*result.row(), style=style)
        self.console.print(table)


def make_display(plain: bool) -> Display:
    """Rich on a terminal when installed (and not ``plain``), plain lines otherwise."""
    if plain or not sys.stdout.isatty():
        return Display()
    try:
        import rich  # noqa: F401
    except ImportError:
        return Display()
    return RichDisplay()
