"""benchmarks/postgres_locks.py still runs: a smoke run with tiny counts, no timed assertion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TARGETS = (
    "uncontended acquire+release <= 1.2x raw advisory lock",
    "queued hand-off p50 (8 waiters) <= 1.5x raw advisory lock",
    "hand-off loop p50 (8 tasks, hold 0) <= 1.5x raw advisory lock",
    "FIFO violations == 0",
    "many keys throughput >= 0.8x raw advisory lock",
)


def test_postgres_benchmark_quick_run_prints_every_target(pg_url: str) -> None:
    """The benchmark exits 0 and prints a met / NOT met line for each target of issue 4."""
    tiny = ["--quick", "--rounds", "1", "--uncontended-rounds", "1", "--n", "50",
            "--handoffs", "20", "--mk-total", "200", "--fair-trials", "1"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "postgres_locks.py"), "--dsn", pg_url, *tiny],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for target in TARGETS:
        found = [line for line in lines if target in line]
        assert found, f"no line for {target!r} in:\n{proc.stdout}"
        assert found[0].startswith(("[met]", "[NOT MET]")), found[0]
