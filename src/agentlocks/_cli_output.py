"""How the CLI prints tables: with ``rich`` when it is installed, plain text otherwise.

``rich`` comes with ``agentlocks[demo]``; nothing here imports it unless it is present.
Plain output is aligned columns, safe to pipe into ``grep`` or ``awk``.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Sequence
from typing import TextIO

__all__ = ["has_rich", "print_table"]


def has_rich() -> bool:
    """True when ``rich`` can be imported."""
    return importlib.util.find_spec("rich") is not None


def print_table(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    out: TextIO | None = None,
    plain: bool = False,
) -> None:
    """Print one table to ``out`` (stdout): a rich table if available, else plain columns."""
    out = sys.stdout if out is None else out
    if has_rich() and not plain:
        from rich.console import Console
        from rich.table import Table

        width = shutil.get_terminal_size((120, 24)).columns
        table = Table(title=title, title_justify="left")
        for header in headers:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console(file=out, width=max(width, 80), highlight=False).print(table)
        return
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    print(title, file=out)
    for row in (headers, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
