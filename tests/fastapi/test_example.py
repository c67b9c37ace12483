"""examples/ingestion_service.py runs: its --demo serves, sends the README's calls, exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ingestion_service.py"


def test_ingestion_service_demo_keeps_every_document_and_sheds_the_burst() -> None:
    """The demo stores alice's 3 documents, answers the 30-user burst with 200s and 503s."""
    env = {k: v for k, v in os.environ.items() if k != "AGENTLOCKS_URL"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--demo"],
        capture_output=True, text=True, timeout=50, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    counts = re.search(r"200 x (\d+), 503 x (\d+)", result.stdout)
    assert counts is not None, result.stdout
    served, rejected = map(int, counts.groups())
    # 4 run + 16 wait = 20 admitted if the burst lands within one 0.2 s hold; a slow
    # machine may admit more as early requests finish, but never all 30 at once.
    assert served + rejected == 30 and served >= 20 and rejected >= 1
    assert "'error': 'queue_full'" in result.stdout
    assert result.stdout.rstrip().endswith("ok")
