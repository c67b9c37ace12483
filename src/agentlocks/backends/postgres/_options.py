"""Options of the PostgreSQL backend, validated before any I/O."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agentlocks.errors import ConfigError

from ._sql import DEFAULT_SCHEMA

#: Option names accepted in the URL query or as ``connect()`` keywords.
OPTION_NAMES: Final = frozenset(
    {
        "connect_timeout",
        "liveness_interval",
        "pool_size",
        "max_idle",
        "max_spares",
        "spare_patience",
        "schema",
        "application_name",
    }
)


@dataclass(frozen=True, slots=True)
class PgOptions:
    """The backend's options, with their defaults.

    Attributes:
        connect_timeout: Seconds to open one connection, authentication included.
        liveness_interval: Seconds between liveness checks of the sessions holding grants,
            and the bound on how late a silently lost grant (or a semaphore slot freed by
            a crashed holder) is noticed.
        pool_size: Shared sessions (fast-path grants, releases, queries).
        max_idle: Clean spare sessions kept open for the next wait (more are kept while
            in use recently, and closed after ``_session.IDLE_LINGER`` seconds unused).
        max_spares: Spare sessions lent at once (one per key waited on in the server, kept
            by the grant it wins); further waits queue FIFO for one to come back. A task
            that already holds a grant may exceed it (see ``postgres/_spares.py``).
        spare_patience: Seconds a wait queues for a spare before it takes one beyond
            ``max_spares`` (a soft bound: leases held across tasks cannot deadlock on it).
        schema: Schema of the token sequence and the generation table: always
            schema-qualified, so every role shares them whatever its ``search_path``.
        application_name: Shown in ``pg_stat_activity`` for this backend's connections.
    """

    connect_timeout: float = 5.0
    liveness_interval: float = 2.0
    pool_size: int = 8
    max_idle: int = 4
    max_spares: int = 32
    spare_patience: float = 1.0
    schema: str = DEFAULT_SCHEMA
    application_name: str = "agentlocks"


_DEFAULTS: Final = PgOptions()


def _positive(options: Mapping[str, object], name: str, default: float, integer: bool) -> float:
    value = options.get(name, default)
    number: float = -1
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            number = float(value)
    if not number > 0 or (integer and not number.is_integer()):
        kind = "an int >= 1" if integer else "a number of seconds > 0"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return number


def parse_options(options: Mapping[str, object]) -> PgOptions:
    """Validate the backend options (strings from a URL query, or keyword values)."""
    schema = options.get("schema", DEFAULT_SCHEMA)
    if not isinstance(schema, str) or not schema:
        raise ConfigError(f"schema must be a non-empty str, got {schema!r}")
    app = options.get("application_name", _DEFAULTS.application_name)
    if not isinstance(app, str):
        raise ConfigError(f"application_name must be a str, got {app!r}")
    return PgOptions(
        connect_timeout=_positive(options, "connect_timeout", _DEFAULTS.connect_timeout, False),
        liveness_interval=_positive(
            options, "liveness_interval", _DEFAULTS.liveness_interval, False
        ),
        pool_size=int(_positive(options, "pool_size", _DEFAULTS.pool_size, True)),
        max_idle=int(_positive(options, "max_idle", _DEFAULTS.max_idle, True)),
        max_spares=int(_positive(options, "max_spares", _DEFAULTS.max_spares, True)),
        spare_patience=_positive(options, "spare_patience", _DEFAULTS.spare_patience, False),
        schema=schema,
        application_name=app,
    )
