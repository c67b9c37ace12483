"""benchmarks/langgraph.py still runs: a smoke run with tiny counts, never a timed assertion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import require_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "langgraph.py"

TABLES = (
    "## 1. Throughput",
    "## 2. One double-texted thread",
    "## 3. Added latency per run",
    "## Targets (issue 9)",
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTLOCKS_TEST_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        env=env,
    )


def _assert_report(proc: subprocess.CompletedProcess[str], labels: list[str]) -> None:
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for title in TABLES:
        assert title in out, f"no {title!r} in:\n{out}"
    # The throughput table counts the collector's runs per variant (RESULTS.md uses them).
    assert "GC young / full collections" in out, out
    for label in labels:
        lines = [ln for ln in out.splitlines() if ln.startswith(("[met]", "[NOT MET]"))]
        throughput = [ln for ln in lines if label in ln and "throughput" in ln]
        assert throughput, f"no throughput target line for {label!r} in:\n{out}"
        # The guarded double-texts keep every message, whatever the machine's load.
        kept = [ln for ln in lines if label in ln and "lose no message" in ln]
        assert kept and kept[0].startswith("[met]"), out


@pytest.mark.timeout(60)
def test_quick_run_on_memory_prints_its_tables_and_exits_0() -> None:
    """--quick on InMemorySaver + memory:// exits 0 with every table and target line."""
    proc = _run("--backends", "memory")
    _assert_report(proc, ["InMemorySaver + memory://"])


@pytest.mark.timeout(60)
def test_quick_run_on_postgres_prints_its_tables_and_exits_0() -> None:
    """--quick on AsyncPostgresSaver (+ postgresql://, + redis:// if up) exits 0 with its tables."""
    dsn = require_env("AGENTLOCKS_TEST_POSTGRES_URL")
    args = ["--backends", "postgres,redis", "--dsn", dsn, "--pool-size", "4"]
    labels = ["AsyncPostgresSaver + postgresql://"]
    redis_url = os.environ.get("AGENTLOCKS_TEST_REDIS_URL")
    if redis_url:
        args += ["--redis-url", redis_url]
        labels.append("AsyncPostgresSaver + redis://")
    _assert_report(_run(*args), labels)
