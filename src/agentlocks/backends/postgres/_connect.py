"""How a PostgreSQL connection is made and set up: the DSN asyncpg gets, the session settings.

Every session turns off ``statement_timeout`` and ``lock_timeout`` (a database default
could set them against a legitimate wait) and carries its server-side lease in
``idle_session_timeout`` (``docs/backends.md``, "PostgreSQL"); a spare also asks the server
to check its client every second while it waits, so a waiter whose process vanished leaves
the lock queue instead of being granted a lock nobody will release. A connection given
back to a borrowed pool gets those settings reset.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: The setting a session's server-side lease is kept in (PostgreSQL >= 14). On older
#: servers a custom placeholder of the same value is set instead: harmless, and it keeps
#: one statement text for every server.
IDLE_TIMEOUT = "idle_session_timeout"
IDLE_TIMEOUT_OLD = "agentlocks.idle_session_timeout"


def driver_dsn(url: str, ours: frozenset[str]) -> str:
    """Strip agentlocks' own options from the URL query; asyncpg gets the rest."""
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme.lower() in ("postgres", "postgresql") else parts.scheme
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(query)))


def timeout_ms(seconds: float) -> str:
    """``seconds`` as the whole milliseconds ``idle_session_timeout`` takes (0: none)."""
    return "0" if seconds <= 0 else str(max(1, math.ceil(seconds * 1000)))


def lease_setting(server_version: tuple[int, ...]) -> str:
    """The setting that holds a session's server-side lease on this server."""
    return IDLE_TIMEOUT if server_version >= (14,) else IDLE_TIMEOUT_OLD


def setup_sql(guc: str, shared: bool, lease: float) -> str:
    """The statement that sets a new session up; it returns ``pg_backend_pid()`` first.

    ``lease``: the session's server-side lease in seconds (0: none yet; a spare takes one
    only with a grant or a semaphore's gate).
    """
    sql = (
        "SELECT pg_backend_pid(), set_config('statement_timeout', '0', false),"
        " set_config('lock_timeout', '0', false),"
        f" set_config('{guc}', '{timeout_ms(lease)}', false)"
    )
    if not shared and guc == IDLE_TIMEOUT:
        sql += ", set_config('client_connection_check_interval', '1000', false)"
    return sql


def reset_sql(guc: str) -> str:
    """What a connection going back to a borrowed pool gets reset (as the pool lent it)."""
    reset = "RESET statement_timeout; RESET lock_timeout"
    if guc == IDLE_TIMEOUT:
        reset += f"; RESET {guc}; RESET client_connection_check_interval"
    return reset
