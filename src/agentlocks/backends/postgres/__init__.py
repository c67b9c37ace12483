"""The ``postgres://`` / ``postgresql://`` backend: advisory locks through asyncpg.

How it works, once: ``docs/backends.md`` ("PostgreSQL"). Where each part lives:

- ``_backend.py``: :class:`PostgresBackend`, the ``Backend`` methods, and the bypass rule.
- ``_queue.py``: this process's holders and local FIFO per key (where a waiter is woken),
  and ``KeyStates``, their one owner.
- ``_grants.py``: the statements that take, record and release a grant; tokens
  (``_sql.py`` builds the keys and SQL, ``_batch.py`` coalesces the hot statements).
- ``_session.py`` / ``_connection.py``: the sessions (shared, spare, pinned) and their ends;
  ``_connect.py``: the DSN and the settings a new session gets; ``_spares.py``: the
  spare-session budget; ``_errors.py``: the error boundary (driver errors to
  ``BackendError``).
- ``_liveness.py``: keep-alives and server-side leases (``idle_session_timeout``).
- ``_tickets.py``: queue lengths published for ``max_waiting``; ``_signals.py`` and
  ``_heads.py``: the signal and head-record stores; ``_observe.py`` / ``_enumerate.py``:
  ``inspect``; ``_options.py``: the URL options.
"""

from ._backend import PostgresBackend as PostgresBackend

__all__ = ["PostgresBackend"]
