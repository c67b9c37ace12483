"""Connection errors, options and pooler detection of the PostgreSQL backend."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

import agentlocks
from agentlocks import BackendError, ConfigError
from agentlocks._url import COMMON_OPTIONS
from agentlocks.backends.postgres import PostgresBackend
from agentlocks.backends.postgres._connect import driver_dsn
from agentlocks.backends.postgres._connection import Session
from tests.support.servers import free_port, require_env, silent_server

pytestmark = pytest.mark.postgres

PASSWORD = "s3cret-Pa55word"
OURS = PostgresBackend.option_names | COMMON_OPTIONS


async def test_unreachable_server_raises_backend_error() -> None:
    """Nothing listening: BackendError naming the redacted URL, the OS error as cause."""
    port = free_port()
    coord = agentlocks.connect(f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/db")
    try:
        with pytest.raises(BackendError) as caught:
            await coord.acquire("k")
        assert isinstance(caught.value.__cause__, OSError)
        assert PASSWORD not in str(caught.value) and "app:***@" in str(caught.value)
    finally:
        await coord.aclose()


async def test_a_server_that_never_answers_fails_within_the_connect_timeout() -> None:
    """A server that accepts but never answers: BackendError after connect_timeout."""
    async with silent_server() as port:
        coord = agentlocks.connect(
            f"postgresql://app@127.0.0.1:{port}/db?connect_timeout=0.5", namespace="x"
        )
        try:
            with pytest.raises(BackendError) as caught:
                await coord.acquire("k")  # would hang (test timeout) without the timeout
            assert isinstance(caught.value.__cause__, TimeoutError)
        finally:
            await coord.aclose()


@pytest.mark.parametrize(
    "options",
    [
        {"connect_timeout": "soon"},
        {"connect_timeout": 0},
        {"liveness_interval": -1},
        {"pool_size": 0},
        {"pool_size": 1.5},
        {"max_idle": "many"},
        {"max_spares": 0},
        {"spare_patience": "never"},
        {"schema": ""},
    ],
)
def test_bad_options_raise_config_error_before_any_io(options: dict[str, object]) -> None:
    """Malformed backend options are a ConfigError from connect(), before any I/O."""
    with pytest.raises(ConfigError):
        agentlocks.connect("postgresql://app@127.0.0.1:1/db", **options)


async def test_options_in_the_url_query_are_not_passed_to_the_driver(pg_url: str) -> None:
    """Our options may come from the URL query; asyncpg only sees its own parameters."""
    separator = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{separator}pool_size=2&liveness_interval=0.5&namespace=pgtest-query"
    async with agentlocks.connect(url) as coord, coord.acquire("k") as lease:
        assert lease.token >= 1
    dsn = driver_dsn("postgres://u:p@h:5/db?pool_size=3&sslmode=disable&lease_ttl=9", OURS)
    assert dsn == "postgresql://u:p@h:5/db?sslmode=disable"


def test_a_changed_backend_pid_is_reported_as_a_pooler() -> None:
    """A statement answering from another server session raises BackendError naming PgBouncer."""

    session = Session(object(), shared=True, pid=41)
    session.check_pid(41)
    with pytest.raises(BackendError, match="PgBouncer"):
        session.check_pid(42)


# -- authentication, against a throwaway server of our own with password auth ---------------


def _as_pg_user() -> dict[str, object]:
    """subprocess options running a child as AGENTLOCKS_TEST_PG_USER (needed as root)."""
    name = os.environ.get("AGENTLOCKS_TEST_PG_USER")
    if not name:
        if os.geteuid() == 0:
            pytest.skip("running as root and AGENTLOCKS_TEST_PG_USER is not set")
        return {}
    entry = pwd.getpwnam(name)

    def demote() -> None:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return {"preexec_fn": demote, "user_ids": (entry.pw_uid, entry.pw_gid)}


@pytest.fixture(scope="module")
def password_server() -> Iterator[int]:
    """A PostgreSQL started from AGENTLOCKS_TEST_PG_BINDIR with scram-sha-256 auth."""
    bindir = require_env("AGENTLOCKS_TEST_PG_BINDIR")
    options = _as_pg_user()
    ids = options.pop("user_ids", None)
    tmp = Path(tempfile.mkdtemp(prefix="agentlocks-auth-", dir="/tmp"))
    pwfile = tmp / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if isinstance(ids, tuple):
        for path in (tmp, pwfile):
            os.chown(path, *ids)
    process = None
    try:
        subprocess.run(
            [f"{bindir}/initdb", "-D", str(tmp / "data"), "-U", "postgres",
             "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"],
            cwd=tmp, check=True, capture_output=True, **options,  # type: ignore[call-overload]
        )  # fmt: skip
        port = free_port()
        process = subprocess.Popen(
            [f"{bindir}/postgres", "-D", str(tmp / "data"), "-k", str(tmp), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            **options,  # type: ignore[call-overload]
        )  # fmt: skip
        deadline = time.monotonic() + 30
        # An open port is not a ready server ("the database system is starting up"):
        # pg_isready answers 0 only once connections are accepted.
        ready = [f"{bindir}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]
        while True:
            if subprocess.run(ready, check=False).returncode == 0:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the password-auth PostgreSQL did not start")
            time.sleep(0.1)
        yield port
    finally:
        if process is not None:
            process.send_signal(signal.SIGQUIT)  # immediate shutdown
            process.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


async def test_bad_password_raises_backend_error_without_the_password(
    password_server: int,
) -> None:
    """Wrong password: BackendError saying authentication failed, the password nowhere."""
    wrong = "not-the-" + PASSWORD
    coord = agentlocks.connect(
        f"postgresql://postgres:{wrong}@127.0.0.1:{password_server}/postgres", namespace="auth"
    )
    try:
        with pytest.raises(BackendError, match="authentication failed") as caught:
            await coord.acquire("k")
        assert isinstance(caught.value.__cause__, asyncpg.InvalidPasswordError)
        for text in (str(caught.value), repr(caught.value), repr(coord), str(coord.backend)):
            assert wrong not in text
        assert "postgres:***@" in str(caught.value)
    finally:
        await coord.aclose()


async def test_the_right_password_works(password_server: int) -> None:
    """The same server with the right password grants locks (so the failure above is auth)."""
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{password_server}/postgres"
    async with agentlocks.connect(url, namespace="auth") as coord, coord.acquire("k") as lease:
        assert lease.token >= 1
