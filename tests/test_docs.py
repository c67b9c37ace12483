"""The documentation runs: README and docs/ code blocks, docstring examples, the examples.

Every ```python block of README.md and docs/*.md runs as a script of its own, in a fresh
interpreter, on ``memory://``. A block that needs a server or is only an illustration is
marked with ``<!-- not-run -->`` on the line before its fence and is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = "<!-- not-run -->"
BLOCK_TIMEOUT = 30.0

#: Modules whose docstring examples must exist and pass; any other module of the package
#: that contains ">>>" is checked too.
DOCTEST_MODULES = [
    "agentlocks.coordinator",
    "agentlocks._lease",
    "agentlocks._registry",
    "agentlocks._registry_lock",
]

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")  # also fences indented in list items


def _python_blocks(path: Path) -> list[tuple[int, str, bool]]:
    """Return (line number of the fence, code, marked not-run) for each ```python block."""
    blocks: list[tuple[int, str, bool]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, indent, language = i, match.group(1), match.group(2)
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i].removeprefix(indent))
            i += 1
        i += 1  # the closing fence
        if language in ("python", "py"):
            skipped = start > 0 and lines[start - 1].strip() == NOT_RUN
            blocks.append((start + 1, "\n".join(body) + "\n", skipped))
    return blocks


def _doc_cases() -> list[object]:
    cases: list[object] = []
    for path in DOCS:
        if not path.exists():
            continue
        for line, code, skipped in _python_blocks(path):
            marks = [pytest.mark.skip(reason=f"marked {NOT_RUN}")] if skipped else []
            name = f"{path.relative_to(ROOT)}:{line}"
            cases.append(pytest.param(code, id=name, marks=marks))
    return cases


def _doctest_modules() -> list[str]:
    package = ROOT / "src" / "agentlocks"
    found = set(DOCTEST_MODULES)
    for path in package.rglob("*.py"):
        if path.name != "__main__.py" and ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(package.parent).with_suffix("").parts
            found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(found)


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``python args`` with a clean agentlocks environment (no $AGENTLOCKS_URL)."""
    env = {k: v for k, v in os.environ.items() if k != "AGENTLOCKS_URL"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("code", _doc_cases())
def test_markdown_python_block_runs(code: str, tmp_path: Path) -> None:
    """Each ```python block of README.md and docs/*.md runs to completion as a script."""
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    result = _run([str(script)], tmp_path, BLOCK_TIMEOUT)
    assert result.returncode == 0, f"block failed:\n{code}\n--- stderr ---\n{result.stderr}"


def test_every_doc_page_has_a_runnable_block() -> None:
    """README.md and every docs page we ship exist and contain at least one run block."""
    assert (ROOT / "README.md").exists()
    for name in ("index", "quickstart", "locks", "backends", "errors"):
        assert (ROOT / "docs" / f"{name}.md").exists(), f"docs/{name}.md is missing"
    for path in (ROOT / "README.md", ROOT / "docs" / "locks.md", ROOT / "docs" / "quickstart.md"):
        assert any(not skipped for _, _, skipped in _python_blocks(path)), path


def test_relative_links_resolve() -> None:
    """Every relative link in README.md and docs/*.md points at a file that exists."""
    broken = []
    for path in DOCS:
        if not path.exists():
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):
                continue  # an external URL or an anchor on the same page
            if not (path.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, broken


@pytest.mark.parametrize("module", _doctest_modules())
def test_docstring_examples_pass(module: str, tmp_path: Path) -> None:
    """The ``>>>`` examples in the module's docstrings exist and pass (doctest.testmod)."""
    check = (
        "import doctest, importlib, sys\n"
        f"result = doctest.testmod(importlib.import_module({module!r}))\n"
        "print(f'{result.attempted} attempted, {result.failed} failed')\n"
        "sys.exit(1 if result.failed or not result.attempted else 0)\n"
    )
    result = _run(["-c", check], tmp_path, BLOCK_TIMEOUT)
    assert result.returncode == 0, f"{module}:\n{result.stdout}\n{result.stderr}"


def test_double_text_example_exits_zero() -> None:
    """examples/double_text.py shows the lost update, then no loss under the lock; exit 0."""
    result = _run([str(ROOT / "examples" / "double_text.py")], ROOT, 60.0)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOST UPDATE" in result.stdout  # the unlocked runs do lose a message
    assert "nothing lost" in result.stdout
