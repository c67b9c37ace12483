"""``agentlocks demo --quick`` as a user runs it: a subprocess starting real uvicorn servers.

Each run starts the unguarded and the guarded fleet, drives both with the same traffic and
prints the result table; these tests read its rows. The guarded run must keep every message
and the unguarded one must lose some, on one replica (memory://) and on two sharing Redis or
PostgreSQL; memory:// with two replicas must say it cannot protect them and exit 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import agentlocks
from agentlocks._demo import main
from tests.conftest import backend_url_for

pytest.importorskip("uvicorn")
pytest.importorskip("langgraph.checkpoint.sqlite")

#: The directory this test imported agentlocks from: the demo's processes import the same.
SOURCE_ROOT = Path(agentlocks.__file__).resolve().parents[1]


def run_demo(*args: str) -> tuple[int, str, dict[str, dict[str, int]]]:
    """Run the demo with ``args``; return its exit status, output and table rows by run."""
    env = {k: v for k, v in os.environ.items() if k != "AGENTLOCKS_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "agentlocks._demo", "--quick", "--plain", *args],
        capture_output=True, text=True, timeout=55, check=False, env=env,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    return proc.returncode, output, table_rows(proc.stdout)


def table_rows(stdout: str) -> dict[str, dict[str, int]]:
    """The result table's rows: run label -> the integer columns (expected ... failed)."""
    lines = stdout.splitlines()
    header = next((i for i, line in enumerate(lines) if line.split()[:2] == ["run", "expected"]))
    names = lines[header].split()[1:8]
    rows = {}
    for line in lines[header + 1 : header + 3]:
        cells = line.split()
        rows[cells[0]] = dict(zip(names, map(int, cells[1:8]), strict=True))
    return rows


def assert_guarded_kept_everything(
    status: int, output: str, rows: dict[str, dict[str, int]]
) -> None:
    """Exit 0; guarded: nothing lost, nothing dangling, nothing failed; unguarded lost some."""
    assert status == 0, output
    guarded, unguarded = rows["guarded"], rows["unguarded"]
    assert guarded["expected"] > 0 and guarded["lost"] == 0, output
    assert guarded["kept"] == guarded["expected"], output
    assert guarded["dangling"] == 0 and guarded["failed"] == 0, output
    assert unguarded["lost"] > 0, output
    assert "guarded by agentlocks: lost nothing" in output


def test_demo_on_memory_guarded_run_loses_nothing_unguarded_run_loses_messages() -> None:
    """One replica on memory://: the guarded run keeps every message, the unguarded loses."""
    status, output, rows = run_demo()
    assert_guarded_kept_everything(status, output, rows)
    assert rows["guarded"]["503"] > 0, output  # the burst above capacity is shed, not hung


def test_demo_reject_strategy_answers_double_texts_409() -> None:
    """--strategy reject: double-texts get 409, and the guarded run still loses nothing."""
    status, output, rows = run_demo("--strategy", "reject")
    assert_guarded_kept_everything(status, output, rows)
    assert rows["guarded"]["409"] > 0 and rows["unguarded"]["409"] == 0, output


def test_demo_interrupt_strategy_stops_the_running_turn_and_loses_nothing() -> None:
    """--strategy interrupt: double-texts interrupt the running turn; nothing is lost."""
    status, output, rows = run_demo("--strategy", "interrupt")
    assert_guarded_kept_everything(status, output, rows)
    assert "runs were interrupted by a newer message" in output


@pytest.mark.redis
def test_demo_two_replicas_on_redis_guarded_run_loses_nothing() -> None:
    """Two replicas sharing Redis locks and a SQLite checkpointer: the guarded run is whole."""
    status, output, rows = run_demo("--url", backend_url_for("redis"), "--replicas", "2")
    assert_guarded_kept_everything(status, output, rows)
    assert "4 servers up" in output


@pytest.mark.postgres
def test_demo_two_replicas_on_postgres_guarded_run_loses_nothing() -> None:
    """Two replicas sharing PostgreSQL (locks and AsyncPostgresSaver): the guarded run is whole."""
    status, output, rows = run_demo("--url", backend_url_for("postgresql"), "--replicas", "2")
    assert_guarded_kept_everything(status, output, rows)
    assert "AsyncPostgresSaver" in output


def test_demo_memory_with_two_replicas_says_locks_cannot_protect_them_and_exits_1() -> None:
    """memory:// and 2 replicas: the note says so, the guarded run loses too, exit status 1."""
    status, output, rows = run_demo("--replicas", "2")
    assert status == 1, output
    assert "cannot protect" in output
    assert rows["guarded"]["lost"] > 0 and rows["unguarded"]["lost"] > 0, output


def test_demo_usage_errors_exit_2_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --replicas or --strategy exits 2 before starting anything; --help exits 0."""
    assert main(["--replicas", "0"]) == 2
    assert main(["--strategy", "wait"]) == 2
    assert "expected 1 to 16" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "double-texts" in capsys.readouterr().out


def test_demo_bad_url_is_one_readable_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown scheme exits 1 with one readable line, no traceback."""
    assert main(["--quick", "--plain", "--url", "nosuch://x"]) == 1
    out = capsys.readouterr().err.strip()
    assert out.startswith("agentlocks demo:") and "\n" not in out and "Traceback" not in out


def test_demo_unreachable_server_is_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server nobody listens on exits 1 with one line that never shows the password."""
    assert main(["--quick", "--plain", "--url", "redis://app:s3cret-pw@127.0.0.1:1/0"]) == 1
    out = capsys.readouterr().err.strip()
    assert out.startswith("agentlocks demo: cannot reach") and "\n" not in out, out
    assert "s3cret-pw" not in out


def test_result_counts_promised_messages_missing_from_the_history_as_lost() -> None:
    """A 200's message and answer are expected; 409/503 promise nothing; interrupted, 1."""
    from agentlocks._demo._load import Outcome, Thread
    from agentlocks._demo._report import Result, verdict

    outcomes = [
        Outcome("ok", "t1", "m1", "a1", 0.1),
        Outcome("ok", "t1", "m2", "a2", 0.3),
        Outcome("interrupted", "t1", "m3", None, 0.2),
        Outcome("409", "t2", "m4", None, 0.01),
        Outcome("503", "t2", "m5", None, 0.5),
        Outcome("failed", "t2", "m6", None, 0.2, "ValueError: INVALID_CHAT_HISTORY ...\nmore"),
    ]
    threads = {
        "t1": Thread(frozenset({"m1", "m2", "a2", "m3"}), dangling=0),
        "t2": Thread(frozenset(), dangling=1),
    }
    result = Result.of("unguarded", outcomes, threads, seconds=2.0)
    assert (result.expected, result.kept, result.lost) == (5, 4, 1)
    assert (result.conflicts, result.unavailable, result.failed) == (1, 1, 1)
    assert result.corrupted == 1 and result.failures == () and result.dangling == 1
    assert result.throughput == 1.5 and not result.clean
    line = verdict(result, result, shared_memory=True)
    assert "NOT clean: lost 1 of 5 messages, 1 dangling tool calls" in line
    assert "cannot protect several replicas" in line
