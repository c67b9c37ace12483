"""examples/langgraph_chat.py runs: its --demo double-texts, disconnects, keeps every message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "langgraph_chat.py"


def test_langgraph_chat_demo_answers_409_and_survives_a_disconnect() -> None:
    """The demo gets 409 for a double-text, a usable thread after a disconnect, and ok."""
    env = {k: v for k, v in os.environ.items() if k != "AGENTLOCKS_URL"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--demo"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "double-text: 409" in result.stdout
    assert result.stdout.rstrip().endswith("ok")
