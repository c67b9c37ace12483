"""Release: sdist and wheel build, and the wheel works in a fresh venv without the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import agentlocks

ROOT = Path(__file__).resolve().parent.parent


def _first_python_block(path: Path) -> str:
    match = re.search(r"^```python\n(.*?)^```", path.read_text("utf-8"), re.S | re.M)
    assert match, f"no python block in {path}"
    return match.group(1)


def _clean_env() -> dict[str, str]:
    # Nothing of the checkout may leak in: no PYTHONPATH, no virtualenv of the suite.
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_version_lives_in_one_place() -> None:
    """pyproject takes the version from agentlocks.__version__; no other copy exists."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", agentlocks.__version__)


@pytest.mark.timeout(300)
def test_wheel_runs_the_readme_quickstart_and_cli_in_a_fresh_venv(tmp_path: Path) -> None:
    """`python -m build` makes an sdist and a wheel; the wheel alone runs README and CLI."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    version = agentlocks.__version__
    wheel = dist / f"agentlocks-{version}-py3-none-any.whl"
    assert wheel.exists() and (dist / f"agentlocks-{version}.tar.gz").exists()
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(f"agentlocks-{version}.dist-info/METADATA").decode()
    runtime = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert runtime, "the wheel declares its runtime dependencies"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py, env = venv / "bin" / "python", _clean_env()
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, env=env, timeout=120)
    subprocess.run([*pip, *runtime], check=True, env=env, timeout=180)

    where = subprocess.run(
        [str(py), "-c", "import agentlocks; print(agentlocks.__file__, agentlocks.__version__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    path, installed = where.stdout.split()
    assert Path(path).is_relative_to(venv) and installed == version
    quickstart = subprocess.run(
        [str(py), "-c", _first_python_block(ROOT / "README.md")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert quickstart.returncode == 0, quickstart.stderr
    assert "token" in quickstart.stdout
    cli = subprocess.run(
        [str(venv / "bin" / "agentlocks"), "--help"], env=env, capture_output=True, text=True
    )
    assert cli.returncode == 0 and "inspect" in cli.stdout, cli.stderr
