"""The error boundary of the PostgreSQL backend: driver errors become ``BackendError``.

Every statement that can fail with a driver error runs inside ``map_driver_errors()``:
the user sees a :class:`~agentlocks.errors.BackendError` naming the server (its URL
redacted, the password never in the message), and asyncpg's error stays as ``__cause__``.
Call sites that treat a driver error specially (a grant gone with its connection, a spare
to close) catch :data:`DRIVER_ERRORS` inside the boundary and re-raise.
"""

from __future__ import annotations

from types import TracebackType

import asyncpg

from agentlocks.errors import BackendError

#: What asyncpg raises for a failed statement or connection.
DRIVER_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PgBouncerDetected(BackendError):
    """The backend pid changed between statements on one connection (a pooler)."""


class ServerFull(BackendError):
    """The server refused a connection: ``max_connections`` or the role's limit reached."""


class ErrorBoundary:
    """Turns driver errors into the ``BackendError`` the user sees, for one server."""

    __slots__ = ("_bounds", "_password", "_redacted")

    def __init__(self, redacted: str, password: str | None) -> None:
        self._redacted = redacted
        self._password = password
        self._bounds: dict[str, _Mapped] = {}

    def error(self, exc: BaseException, doing: str = "talking to") -> BackendError:
        """``exc`` as a BackendError (raise it ``from exc``); never holds the password."""
        if isinstance(
            exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
        ):
            return BackendError(f"authentication failed {doing} {self._redacted}")
        text = str(exc) or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return BackendError(f"PostgreSQL error {doing} {self._redacted}: {text}")

    def map_driver_errors(self, doing: str = "talking to") -> _Mapped:
        """A context manager raising ``error(exc, doing) from exc`` for a driver error.

        Reusable and re-entrant (it keeps no state), so one per ``doing`` is made once:
        the hot paths pay no allocation for it.
        """
        bound = self._bounds.get(doing)
        if bound is None:
            bound = self._bounds[doing] = _Mapped(self, doing)
        return bound


class _Mapped:
    """``ErrorBoundary.map_driver_errors``: a plain class, cheaper than a generator."""

    __slots__ = ("_boundary", "_doing")

    def __init__(self, boundary: ErrorBoundary, doing: str) -> None:
        self._boundary = boundary
        self._doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, DRIVER_ERRORS):
            raise self._boundary.error(exc, self._doing) from exc
