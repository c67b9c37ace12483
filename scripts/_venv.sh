# shellcheck shell=bash
# scripts/_venv.sh -- sourced (never run) by scripts/test and scripts/demo, so both commands
# build the same .venv the same way and share one install stamp.
#
#   source scripts/_venv.sh && ensure_venv
#
# ensure_venv creates .venv if missing (or if its interpreter vanished) and installs the
# project into it: pip install -e '.[all]' --group dev, skipped while
# .venv/.agentlocks-installed is newer than pyproject.toml. It then prints the venv's Python
# version and leaves these set for the caller:
#   VENV   the repository's .venv
#   STAMP  the install stamp (.venv/.agentlocks-installed)
#   PY     .venv/bin/python
# Environment: PYTHON = interpreter used to create .venv (default: python3, >= 3.11).

ensure_venv() {
    local root base_py
    root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
    VENV="$root/.venv"
    STAMP="$VENV/.agentlocks-installed"
    PY="$VENV/bin/python"
    if [[ ! -x "$PY" ]] || ! "$PY" -c '' 2>/dev/null; then
        base_py=${PYTHON:-python3}
        command -v "$base_py" >/dev/null 2>&1 || _venv_die "$base_py not found; need Python >= 3.11"
        "$base_py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || _venv_die "$base_py is $("$base_py" -V 2>&1); need Python >= 3.11"
        # --clear: a .venv whose interpreter vanished (e.g. python upgraded) is rebuilt in place.
        echo "creating .venv with $base_py ($("$base_py" -V 2>&1))"
        "$base_py" -m venv --clear "$VENV"
        rm -f "$STAMP"
    fi
    if [[ -f "$STAMP" && "$STAMP" -nt "$root/pyproject.toml" ]]; then
        echo "dependencies up to date ($(basename "$STAMP") newer than pyproject.toml)"
    else
        # `--group` (PEP 735 dependency groups) needs pip >= 25.1 and reads ./pyproject.toml,
        # hence the cd.
        "$PY" -m pip install -q --disable-pip-version-check --upgrade 'pip>=25.1'
        (cd "$root" && "$PY" -m pip install -q --disable-pip-version-check -e '.[all]' --group dev)
        touch "$STAMP"
        echo "installed agentlocks[all] + dev group into .venv"
    fi
    "$PY" -V
}

_venv_die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
