"""House rule 11 (STYLE.md): every test states its behaviour in a one-line docstring."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("tests/**/*.py"), *ROOT.glob("src/agentlocks/testing/*.py")])


def _tests_without_a_one_line_docstring(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test_"
        ):
            doc = ast.get_docstring(node)
            if not doc or "\n" in doc.strip():
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    return bad


def test_every_test_function_has_a_one_line_docstring() -> None:
    """Each test_* function in tests/ and agentlocks.testing has a one-line docstring."""
    assert len(SOURCES) > 20  # the glob found the suite
    bad = [entry for path in SOURCES for entry in _tests_without_a_one_line_docstring(path)]
    assert not bad, "tests without a one-line docstring:\n" + "\n".join(bad)
