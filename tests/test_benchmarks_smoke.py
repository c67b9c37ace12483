"""The benchmark scripts still run: a smoke run with tiny counts, never a timed assertion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

TARGET_LINES = (
    "uncontended acquire+release <= 3x asyncio.Lock",
    "queued hand-off p50 <= 2x asyncio.Lock",
    "FIFO violations == 0",
    "self-handoff (self-reacquire in the hand-off loop) == 0%",
    "memory: backend entries after 100,000 distinct keys == 0",
    "memory: RSS within 5 MB of the start after 100,000 keys",
)


@pytest.mark.timeout(60)
def test_locks_benchmark_quick_run_prints_every_target() -> None:
    """benchmarks/locks.py --quick exits 0 and prints a met/NOT met line for each target."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "locks.py"), "--quick", "--memory-keys", "100000"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for target in TARGET_LINES:
        found = [ln for ln in lines if target in ln]
        assert found, f"no target line for {target!r} in:\n{proc.stdout}"
        assert found[0].startswith(("[met]", "[NOT MET]")), found[0]
