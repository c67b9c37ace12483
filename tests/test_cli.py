"""The ``agentlocks`` command, run as a subprocess against memory:// and real servers."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import agentlocks
from agentlocks._survey import survey
from tests.conftest import backend_url_for
from tests.support.servers import free_port


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentlocks", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


async def _acli(*args: str) -> subprocess.CompletedProcess[str]:
    # Off the event loop: the test's own coordinator must keep renewing while the CLI runs.
    return await asyncio.to_thread(_cli, *args)


def _with_namespace(url: str, namespace: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}namespace={namespace}"


def test_help_of_every_command_explains_with_an_example() -> None:
    """--help of the command and of each subcommand exits 0 and shows an example."""
    for args in ([], ["inspect"], ["bench"]):
        out = _cli(*args, "--help")
        assert out.returncode == 0, out.stderr
        assert "example" in out.stdout and "agentlocks" in out.stdout
    assert "inspect" in _cli("--help").stdout and "demo" in _cli("--help").stdout


def test_usage_error_exits_2_with_one_readable_line() -> None:
    """A missing argument or unknown command exits 2 with one line naming the problem."""
    for args in ([], ["inspect"], ["nonsense"], ["inspect", "memory://", "--watch", "x"]):
        out = _cli(*args)
        assert out.returncode == 2, out
        assert out.stderr.count("\n") == 1 and "error:" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_bad_url_exits_1_with_one_line() -> None:
    """An unknown scheme or a malformed URL exits 1 with one line, no traceback."""
    for url in ("bogus://x", "redis://[bad"):
        out = _cli("inspect", url)
        assert out.returncode == 1, out
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr


def test_unreachable_server_is_one_line_without_the_password() -> None:
    """inspect and bench on an unreachable server exit 1 with one line hiding the password."""
    port = free_port()
    urls = (f"redis://u:hunter2@127.0.0.1:{port}/0", f"postgresql://u:hunter2@127.0.0.1:{port}/d")
    for command, url in itertools.product(("inspect", "bench"), urls):
        out = _cli(command, url, "--quick") if command == "bench" else _cli(command, url)
        assert out.returncode == 1, out
        assert out.stderr.count("\n") == 1, out.stderr
        assert "hunter2" not in out.stderr + out.stdout and "***" in out.stderr


def test_memory_inspect_says_it_is_in_process() -> None:
    """memory:// from another process shows nothing held and says why; --json parses."""
    out = _cli("inspect", "memory://", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["keys"] == [] and "in-process" in report["notes"][0]


async def test_survey_lists_this_process_memory_locks() -> None:
    """In-process, the survey lists held memory:// locks and semaphores with their waiters."""
    async with agentlocks.connect() as coord, coord.acquire("thread:1") as lease:
        waiter = asyncio.create_task(coord.acquire("thread:1").__aenter__())
        async with coord.semaphore("llm", 2):
            await asyncio.sleep(0.01)
            report = await survey(coord, "")
            only_threads = await survey(coord, "thread")
        waiter.cancel()
        await asyncio.wait([waiter])
    by_key = {e.key: e for e in report.entries}
    assert by_key["thread:1"].holders[0].token == lease.token
    assert by_key["thread:1"].waiting == 1 and by_key["llm"].kind == "semaphore"
    assert [e.key for e in only_threads.entries] == ["thread:1"]


@pytest.mark.skipif(
    importlib.util.find_spec("agentlocks._demo") is not None, reason="the demo is installed"
)
def test_demo_without_the_demo_module_says_so() -> None:
    """`agentlocks demo` without agentlocks._demo exits 1 saying the demo is not installed."""
    out = _cli("demo", "--quick")
    assert out.returncode == 1 and "the demo is not installed" in out.stderr


@pytest.mark.redis
async def test_redis_inspect_shows_a_held_lock_and_its_waiter() -> None:
    """On Redis, inspect lists a lock held by another process with its token and waiter."""
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    url = _with_namespace(backend_url_for("redis"), namespace)
    async with agentlocks.connect(url) as coord, coord.acquire("thread:42") as lease:
        waiter = asyncio.create_task(coord.acquire("thread:42").__aenter__())
        async with (
            coord.semaphore("llm-calls", 4),
            agentlocks.connect(
                _with_namespace(backend_url_for("redis"), namespace + "-other")
            ) as other,
            other.acquire("thread:99"),
        ):
            await asyncio.sleep(0.05)
            out = await _acli("inspect", url, "--json")
            prefixed = await _acli("inspect", url, "thread:", "--json")
            table = await _acli("inspect", url, "--plain")
        waiter.cancel()
        await asyncio.wait([waiter])
    assert out.returncode == 0, out.stderr
    keys = {k["key"]: k for k in json.loads(out.stdout)["keys"]}
    assert set(keys) == {"thread:42", "llm-calls"}  # not the other namespace's thread:99
    assert keys["thread:42"]["holders"][0]["token"] == lease.token
    assert keys["thread:42"]["holders"][0]["mode"] == "exclusive"
    assert keys["thread:42"]["waiting"] == 1 and keys["llm-calls"]["kind"] == "semaphore"
    assert [k["key"] for k in json.loads(prefixed.stdout)["keys"]] == ["thread:42"]
    assert "thread:42" in table.stdout and str(lease.token) in table.stdout


@pytest.mark.postgres
async def test_postgres_inspect_shows_a_held_lock_by_exact_key() -> None:
    """On PostgreSQL, inspect KEY shows the lock another process holds, and lists it by key."""
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    url = _with_namespace(backend_url_for("postgresql"), namespace)
    async with agentlocks.connect(url) as coord, coord.acquire("thread:42"):
        out = await _acli("inspect", url, "thread:42", "--json")
        free = await _acli("inspect", url, "thread:43", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [(k["key"], k["kind"], len(k["holders"])) for k in report["keys"]] == [
        ("thread:42", "lock", 1)
    ]
    assert "hashes" in report["notes"][0]
    named = [a for a in report["advisory_locks"] if a.get("name") == "lock 'thread:42'"]
    assert len(named) == 1 and named[0]["granted"] and not named[0]["shared"]
    assert json.loads(free.stdout)["keys"] == []


def test_memory_bench_quick_reports_agentlocks_next_to_the_floor() -> None:
    """`bench memory:// --quick --json` measures agentlocks and asyncio.Lock in every scenario."""
    out = _cli("bench", "memory://", "--quick", "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert set(results) == {"agentlocks", "asyncio-lock"}
    for name in results:
        assert {"uncontended", "handoff", "manykeys", "fairness"} <= set(results[name])
    assert results["agentlocks"]["fairness"]["violations"] == 0


@pytest.mark.redis
def test_redis_bench_quick_runs_next_to_the_raw_floor() -> None:
    """`bench redis://... --quick` prints a table with the SET NX floor and round trips."""
    out = _cli("bench", backend_url_for("redis"), "--quick", "--plain")
    assert out.returncode == 0, out.stderr
    assert "redis-raw-setnx" in out.stdout and "RTT" in out.stdout


def test_bench_plot_without_matplotlib_is_one_line() -> None:
    """--plot without matplotlib installed fails at once, naming what to install."""
    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed")
    out = _cli("bench", "memory://", "--quick", "--plot", "x.png")
    assert out.returncode == 1 and "pip install matplotlib" in out.stderr


def test_bench_plot_writes_a_png(tmp_path: Path) -> None:
    """--plot FILE.png writes a PNG of the hand-off latency distributions."""
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    target = tmp_path / "handoff.png"
    out = _cli("bench", "memory://", "--quick", "--plot", str(target), "--plain")
    assert out.returncode == 0, out.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.postgres
def test_postgres_bench_quick_runs_next_to_the_advisory_floor() -> None:
    """`bench postgresql://... --quick --json` measures agentlocks beside pg_advisory_lock."""
    out = _cli("bench", backend_url_for("postgresql"), "--quick", "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert {"agentlocks", "pg-advisory-noreset", "pg-select1-rtt"} == set(results)
    assert results["agentlocks"]["fairness"]["violations"] == 0


def test_inspect_watch_redraws_until_interrupted() -> None:
    """--watch prints a fresh report each interval and exits 0 on Ctrl-C (SIGINT)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentlocks", "inspect", "memory://", "--watch", "0.05", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]  # three redraws
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert all(json.loads(line)["namespace"] == "agentlocks" for line in lines)
