"""Advisory-lock keys and the SQL of the PostgreSQL backend.

Keys. A resource is identified by a stable, signed 64-bit BLAKE2b hash of the namespace and
the resource string (``_hash64``). Each lock resource uses two advisory keys that differ only
in the lowest bit: the *gate* (odd) orders requests, the *hold* (even) is what a holder
holds. A semaphore uses its gate plus ``capacity`` consecutive *slot* keys starting at a
second hash. All keys live in PostgreSQL's one 64-bit advisory key space of the current
database (other users of ``pg_advisory_lock`` share it).

Evaluation order. Every statement that takes several locks forces its order with ``CASE``
or ``MATERIALIZED`` CTEs (PostgreSQL documents ``CASE`` as the way to force evaluation
order); ``nextval`` always runs after the hold was taken, so a token is drawn only while the
grant exists and is greater than every token drawn before by any earlier holder.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Final

_SIGNED: Final = 1 << 63
#: Semaphore slot keys are ``base + i``; ``base`` is kept this far below the top of the key
#: space so that the addition never overflows a bigint.
MAX_SLOTS: Final = 1 << 31
#: A local queue's length is published in this many bits (``postgres/_tickets.py``).
TICKET_BITS: Final = 32


def _hash64(*parts: bytes) -> int:
    digest = hashlib.blake2b(digest_size=8, person=b"agentlocks-pg")
    for part in parts:  # length-prefixed: ("ab", "c") and ("a", "bc") hash differently
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return int.from_bytes(digest.digest(), "big", signed=True)


@dataclass(frozen=True, slots=True)
class Keys:
    """The advisory keys of one resource."""

    gate: int
    hold: int
    slot_base: int
    ticket_base: int
    """Bit ``b`` of a process's local queue length: key ``ticket_base + b`` (``_tickets``)."""
    channel: str
    """LISTEN/NOTIFY channel on which semaphore releases wake the waiting head."""


@functools.lru_cache(maxsize=4096)
def keys_for(namespace: str, resource: str) -> Keys:
    """Derive the advisory keys of ``resource`` in ``namespace`` (stable across processes).

    Cached: a hot key's state is dropped whenever it goes idle, its keys need not be.
    """
    ns, res = namespace.encode(), resource.encode("utf-8", "surrogatepass")
    h = _hash64(ns, res)
    base = _hash64(ns, res, b"slots")
    if base >= _SIGNED - MAX_SLOTS:
        base -= MAX_SLOTS
    tickets = _hash64(ns, res, b"tickets")
    if tickets >= _SIGNED - TICKET_BITS:
        tickets -= TICKET_BITS
    return Keys(
        gate=h | 1,
        hold=h & ~1,
        slot_base=base,
        ticket_base=tickets,
        channel=f"agentlocks_{h & 0xFFFFFFFFFFFFFFFF:016x}",
    )


#: Schema of the token sequence and the generation table unless the ``schema`` option says.
DEFAULT_SCHEMA: Final = "public"


def quote_ident(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


class Sql:
    """Every statement, with the schema-qualified sequence and table names filled in."""

    def __init__(self, schema: str = DEFAULT_SCHEMA) -> None:
        # Always schema-qualified, never resolved through a role's search_path: every
        # client of the database must draw tokens from the one sequence (guarantee 4).
        self.schema = schema
        prefix = quote_ident(schema) + "."
        self.sequence = prefix + "agentlocks_tokens"
        self.table = prefix + "agentlocks_generations"
        seq = self.sequence.replace("'", "''")
        nextval = f"nextval('{seq}')"
        self.schema_exists = "SELECT to_regnamespace($1) IS NOT NULL"
        self.bootstrap_schema = f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"
        self.bootstrap_sequence = (
            f"CREATE SEQUENCE IF NOT EXISTS {self.sequence} AS bigint CACHE 1 NO CYCLE"
        )
        self.bootstrap_table = (
            f"CREATE TABLE IF NOT EXISTS {self.table} (namespace text NOT NULL, "
            "name text NOT NULL, generation bigint NOT NULL, PRIMARY KEY (namespace, name))"
        )
        self.exists = "SELECT to_regclass($1) IS NOT NULL"
        self.heads = prefix + "agentlocks_heads"
        # Head records (``postgres/_heads.py``): one row per (namespace, resource, field).
        self.bootstrap_heads = (
            f"CREATE TABLE IF NOT EXISTS {self.heads} (namespace text NOT NULL,"
            " resource text NOT NULL, field text NOT NULL, head text NOT NULL, token bigint,"
            " swapped_at timestamptz NOT NULL, expires_at timestamptz NOT NULL,"
            " PRIMARY KEY (namespace, resource, field));"
            f" CREATE INDEX IF NOT EXISTS agentlocks_heads_expiry ON {self.heads} (expires_at)"
        )

        # Fast path ($1 gate, $2 hold): pass the gate shared (it is held exclusively, or
        # waited for, only by queued requests, so this fails while anyone queues), take the
        # hold without waiting, let go of the gate. Returns (token or NULL, backend pid).
        self.try_exclusive = (
            "SELECT CASE"
            " WHEN NOT pg_try_advisory_lock_shared($1) THEN NULL"
            " WHEN pg_try_advisory_lock($2)"
            f" THEN CASE WHEN pg_advisory_unlock_shared($1) THEN {nextval} END"
            " WHEN pg_advisory_unlock_shared($1) THEN NULL"
            " END, pg_backend_pid()"
        )
        # The same for $3 adjacent shared requests at once: the first take is a real check,
        # the others re-enter the lock this session now holds (one lock count per grant).
        # Returns (array of tokens or NULL, backend pid).
        tokens = (
            f"(SELECT array_agg(CASE WHEN n = 1 THEN {nextval}"
            f" WHEN pg_try_advisory_lock_shared($2) THEN {nextval} END ORDER BY n)"
            " FROM generate_series(1, $3::int) AS n)"
        )
        self.try_shared = (
            "SELECT CASE"
            " WHEN NOT pg_try_advisory_lock_shared($1) THEN NULL"
            " WHEN pg_try_advisory_lock_shared($2)"
            f" THEN CASE WHEN pg_advisory_unlock_shared($1) THEN {tokens} END"
            " WHEN pg_advisory_unlock_shared($1) THEN NULL"
            " END, pg_backend_pid()"
        )

        # Coalesced fast paths and releases of one shared session (``postgres/_batch.py``):
        # releases ($1 hold keys, $2 shared flags) first, then exclusive tries ($3 gates,
        # $4 holds) in order, each exactly like ``try_exclusive``. Returns (array of
        # tokens or NULLs, in try order; backend pid; array of the unlocks' answers).
        self.batch = (
            "WITH u AS MATERIALIZED (SELECT array_agg(CASE WHEN s THEN"
            " pg_advisory_unlock_shared(k) ELSE pg_advisory_unlock(k) END ORDER BY i) AS n"
            " FROM unnest($1::bigint[], $2::bool[]) WITH ORDINALITY AS x(k, s, i)),"
            " t AS MATERIALIZED (SELECT y.i, CASE"
            " WHEN NOT pg_try_advisory_lock_shared(y.g) THEN NULL"
            " WHEN pg_try_advisory_lock(y.h)"
            f" THEN CASE WHEN pg_advisory_unlock_shared(y.g) THEN {nextval} END"
            " WHEN pg_advisory_unlock_shared(y.g) THEN NULL END AS token"
            " FROM u, unnest($3::bigint[], $4::bigint[]) WITH ORDINALITY AS y(g, h, i))"
            " SELECT (SELECT array_agg(token ORDER BY i) FROM t), pg_backend_pid(),"
            " (SELECT n FROM u)"
        )

        # Queued path: wait in the server's FIFO queue for the gate, then for the hold.
        # The session keeps both until release. Once granted, the spare takes on the
        # grant's server-side lease: setting $3 (``idle_session_timeout``) to $4 ms.
        def wait_lock(mode: str) -> str:
            return (
                f"WITH g AS MATERIALIZED (SELECT pg_advisory_lock{mode}($1)),"
                f" h AS MATERIALIZED (SELECT pg_advisory_lock{mode}($2) FROM g)"
                f" SELECT {nextval}, pg_backend_pid(), set_config($3::text, $4::text, false)"
                " FROM h"
            )

        self.wait_exclusive = wait_lock("")
        self.wait_shared = wait_lock("_shared")
        self.unlock_exclusive = "SELECT pg_advisory_unlock($1)"
        self.unlock_shared = "SELECT pg_advisory_unlock_shared($1)"
        # Pinned grants hold (gate, hold): $1 gate, $2 hold; the spare's server-side lease
        # ends with them ($3 as in the wait). Returns (hold unlocked, gate unlocked, _).
        self.unlock_pinned_exclusive = (
            "SELECT pg_advisory_unlock($2), pg_advisory_unlock($1),"
            " set_config($3::text, '0', false)"
        )
        self.unlock_pinned_shared = (
            "SELECT pg_advisory_unlock_shared($2), pg_advisory_unlock_shared($1),"
            " set_config($3::text, '0', false)"
        )
        # Scrubs a spare: every lock it has, and the server-side lease ($1) a grant that
        # raced a cancellation may have set.
        self.unlock_all = "SELECT pg_advisory_unlock_all(), set_config($1::text, '0', false)"

        # Semaphore slots ($1 slot base, $2 capacity, $3 slots this session already holds:
        # a session re-taking its own slot would succeed, advisory locks being re-entrant;
        # $4 how many slots to take at most, for adjacent requests at the head).
        slots = (
            "(SELECT array_agg(i) FROM (SELECT i FROM generate_series(0, $2::int - 1) AS i"
            " WHERE CASE WHEN i = ANY($3::int[]) THEN false"
            " ELSE pg_try_advisory_lock($1::bigint + i) END LIMIT $4::int) AS t)"
        )
        slot_tokens = f"(SELECT array_agg({nextval}) FROM unnest(slots))"
        # Fast path ($5 gate): like try_lock, the gate is passed shared first. ``slots`` is
        # NULL (gate refused) or the slots taken (maybe none); the gate is let go in the
        # second CTE, whose single row is always produced. Tokens are drawn last.
        self.try_slots = (
            "WITH g AS MATERIALIZED (SELECT CASE WHEN pg_try_advisory_lock_shared($5)"
            f" THEN coalesce({slots}, '{{}}') END AS slots),"
            " u AS MATERIALIZED (SELECT slots,"
            " CASE WHEN slots IS NOT NULL THEN pg_advisory_unlock_shared($5) END AS ok FROM g)"
            f" SELECT slots, {slot_tokens} AS tokens, ok FROM u"
        )
        # The head of the queue holds the gate exclusively: nobody else takes slots.
        self.take_slots = (
            f"WITH s AS MATERIALIZED (SELECT coalesce({slots}, '{{}}') AS slots)"
            f" SELECT slots, {slot_tokens} AS tokens FROM s"
        )
        # A semaphore's head waits for the gate ($1) and, once it holds it, takes on the
        # head's server-side lease ($2 ``idle_session_timeout`` set to $3 ms), as a
        # granted lock wait does: the gate blocks the whole queue, so a head cut off
        # silently must lose it on the server too.
        self.wait_gate = (
            "WITH g AS MATERIALIZED (SELECT pg_advisory_lock($1))"
            " SELECT pg_backend_pid(), set_config($2::text, $3::text, false) FROM g"
        )
        self.release_slot = "SELECT pg_advisory_unlock($1), pg_notify($2, '')"

        # Liveness ping; also renews the session's server-side lease: $1 the setting,
        # $2 its value in ms (the idle clock restarts with every statement anyway).
        self.ping = "SELECT pg_backend_pid(), set_config($1::text, $2::text, false)"
        # What the server is doing for session $1 ('active': running a statement, waiting
        # on a lock included), asked on another connection (``Liveness``); no row: gone.
        self.backend_state = "SELECT state FROM pg_stat_activity WHERE pid = $1"
        self.holds = (
            "SELECT EXISTS (SELECT FROM pg_locks WHERE pid = pg_backend_pid() AND granted"
            " AND locktype = 'advisory' AND objsubid = 1"
            " AND ((classid::bigint << 32) | objid::bigint) = $1)"
        )
        # Every advisory lock row on the given keys, on the slot range [$2, $3] or on the
        # ticket range [$4, $5].
        self.locks = (
            "SELECT key, pid, granted, mode FROM (SELECT"
            " ((classid::bigint << 32) | objid::bigint) AS key, pid, granted, mode"
            " FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
            " AS l WHERE key = ANY($1::bigint[]) OR key BETWEEN $2 AND $3"
            " OR key BETWEEN $4 AND $5"
        )
        # Published local-queue lengths (``postgres/_tickets.py``): take the bit keys $1, drop the
        # bit keys $2. Never waits: nobody holds a bit key exclusively.
        self.publish_bits = (
            "WITH d AS MATERIALIZED (SELECT count(pg_advisory_unlock_shared(k)) AS n"
            " FROM unnest($2::bigint[]) AS k)"
            " SELECT count(pg_try_advisory_lock_shared(k)) FROM d, unnest($1::bigint[]) AS k"
        )
        # Compare and update one head record ($1 namespace, $2 resource, $3 field,
        # $4 expected head or NULL for any, $5 new head, $6 token or NULL, $7 ttl seconds).
        # ``cur`` locks the live row first (the INSERT reads it, which forces the order);
        # the upsert's WHERE re-checks the row it conflicts with, so a row created by a
        # concurrent swap after ``cur`` ran is judged on its latest version too. An
        # expired row counts as absent. Returns (rows swapped, head before or NULL, token
        # before or NULL, seconds since the row was last swapped or NULL).
        self.swap_head = (
            "WITH cur AS MATERIALIZED (SELECT"
            " CASE WHEN expires_at > now() THEN head ELSE '' END AS head,"
            " CASE WHEN expires_at > now() THEN token END AS token,"
            " CASE WHEN expires_at > now()"
            " THEN extract(epoch FROM now() - swapped_at)::float8 END AS age"
            f" FROM {self.heads} WHERE namespace = $1 AND resource = $2 AND field = $3"
            " FOR UPDATE),"
            f" ins AS (INSERT INTO {self.heads} AS t"
            " (namespace, resource, field, head, token, swapped_at, expires_at)"
            " SELECT $1, $2, $3, $5, $6::bigint, now(), now() + make_interval(secs => $7::float8)"
            " FROM (SELECT count(*) FROM cur) AS c"
            " ON CONFLICT (namespace, resource, field) DO UPDATE SET head = EXCLUDED.head,"
            " token = CASE WHEN t.expires_at > now() THEN GREATEST(t.token, EXCLUDED.token)"
            " ELSE EXCLUDED.token END, swapped_at = EXCLUDED.swapped_at,"
            " expires_at = EXCLUDED.expires_at"
            " WHERE t.expires_at <= now() OR (($6::bigint IS NULL OR t.token IS NULL"
            " OR t.token <= $6::bigint)"
            " AND ($4::text IS NULL OR t.head = '' OR t.head = $4::text))"
            " RETURNING 1)"
            " SELECT (SELECT count(*) FROM ins), (SELECT head FROM cur), (SELECT token FROM cur),"
            " (SELECT age FROM cur)"
        )
        self.drop_heads = f"DELETE FROM {self.heads} WHERE namespace = $1 AND resource = $2"
        # Expired rows, a bounded batch at a time; rows another sweep or swap holds are left.
        self.sweep_heads = (
            f"DELETE FROM {self.heads} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {self.heads}"
            " WHERE expires_at < now() LIMIT 500 FOR UPDATE SKIP LOCKED))"
        )
        self.read_generation = (
            f"SELECT generation FROM {self.table} WHERE namespace = $1 AND name = $2"
        )
        # Fenced by the writer's grant, in one statement on the session that holds it: the
        # row is written only while this session holds the hold key $4 exclusively (only
        # this session could let go of it, and not while the statement runs). No row: the
        # grant is gone and nothing was written. Generations only grow (GREATEST).
        self.publish_generation_fenced = (
            f"INSERT INTO {self.table} AS t (namespace, name, generation) SELECT $1, $2, $3"
            " WHERE EXISTS (SELECT FROM pg_locks WHERE pid = pg_backend_pid() AND granted"
            " AND locktype = 'advisory' AND objsubid = 1 AND mode = 'ExclusiveLock'"
            " AND ((classid::bigint << 32) | objid::bigint) = $4)"
            " ON CONFLICT (namespace, name) DO UPDATE"
            " SET generation = GREATEST(t.generation, EXCLUDED.generation) RETURNING generation"
        )
