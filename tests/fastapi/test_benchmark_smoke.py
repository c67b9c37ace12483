"""benchmarks/backpressure.py still runs: a --quick smoke run, never a timed assertion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "backpressure.py"


@pytest.mark.timeout(60)
def test_backpressure_benchmark_quick_run_prints_its_tables_and_targets() -> None:
    """--quick exits 0, prints both tables and a met/NOT met line for each target."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--duration", "0.2"],
        capture_output=True, text=True, timeout=55, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "## Throughput" in out and "## Overload" in out
    for target in ("throughput >= 0.9x hand-written", "p99 latency under 2x overload"):
        found = [line for line in out.splitlines() if target in line]
        assert found and found[0].startswith(("[met]", "[NOT MET]")), out
