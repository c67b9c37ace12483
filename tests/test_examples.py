"""The examples run: each as a subprocess, on memory:// and on the rig's real servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import backend_url_for
from tests.support.servers import require_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script: str, *args: str, timeout: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "backend",
    ["memory", pytest.param("redis", marks=pytest.mark.redis),
     pytest.param("postgresql", marks=pytest.mark.postgres)],
)  # fmt: skip
def test_registry_reload_has_no_torn_read_and_every_replica_reloads(backend: str) -> None:
    """registry_reload.py: torn reads unguarded, none guarded, all replicas at the last gen."""
    out = _run("registry_reload.py", "--url", backend_url_for(backend))
    assert out.returncode == 0, out.stdout + out.stderr
    guarded = next(line for line in out.stdout.splitlines() if line.startswith("guarded"))
    assert " 0 torn" in guarded and "generation [3]" in guarded
    unguarded = next(line for line in out.stdout.splitlines() if line.startswith("unguarded"))
    assert " 0 torn" not in unguarded  # the race the registry lock removes is real


@pytest.mark.redis
def test_two_replicas_on_redis_keep_every_note_with_one_command() -> None:
    """two_replicas.py starts Redis and two replicas; guarded, no note is lost, cap held."""
    binary = require_env("AGENTLOCKS_TEST_REDIS_SERVER")
    out = _run("two_replicas.py", "--redis-server", binary, timeout=55)
    assert out.returncode == 0, out.stdout + out.stderr
    guarded = next(line for line in out.stdout.splitlines() if line.startswith("guarded"))
    assert "30 of 30" in guarded and "verdict: guarded" in out.stdout
