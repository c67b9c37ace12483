"""What ``pg_locks`` says about a resource, merged with this process's own bookkeeping.

The server sees one row per (session, lock): it shows who waits and who holds across
every process, but not tokens, and several grants living on one shared session of this
process collapse into one row. So holders and waiters of *this* process come from its own
records (exact), and only other processes' come from ``pg_locks``: one holder per holding
session (token 0 and age 0.0: unknown to us), one waiter per waiting session, plus the
requests each process queues behind its own waiter (the lengths they publish,
``postgres/_tickets.py``).
"""

from __future__ import annotations

import time
from typing import Any

from agentlocks.backends._base import HolderInfo

from ._queue import KeyState, Request
from ._sql import TICKET_BITS, Keys


def _ticket_bit(key: int, keys: Keys) -> int | None:
    bit = key - keys.ticket_base
    return bit if 0 <= bit < TICKET_BITS else None


def foreign_waiting(rows: list[Any], own: frozenset[int], keys: Keys, semaphore: bool) -> int:
    """Requests of other processes waiting on these keys: in the server, or queued locally
    behind their head (the length each process publishes, ``postgres/_tickets.py``)."""
    count = 0
    for r in rows:
        if r["pid"] in own:
            continue
        bit = _ticket_bit(r["key"], keys)
        if bit is not None:
            count += (1 << bit) if r["granted"] else 0
        elif not r["granted"] and r["key"] in (keys.gate, keys.hold):
            count += 1
        elif semaphore and r["key"] == keys.gate and r["mode"] == "ExclusiveLock":
            count += 1  # a queue head holding the gate, waiting for a slot
    return count


def granted_unrecorded(rows: list[Any], state: KeyState | None) -> list[Request]:
    """This process's lock requests the server has granted but their tasks not yet recorded."""
    if state is None:
        return []
    granted = {r["pid"] for r in rows if r["key"] == state.keys.hold and r["granted"]}
    return [
        r
        for r in state.deciders()
        if r.session is not None and r.capacity is None and r.session.pid in granted
    ]


def snapshot(
    rows: list[Any], own: frozenset[int], keys: Keys, state: KeyState | None, semaphore: bool
) -> tuple[tuple[HolderInfo, ...], int]:
    """Holders and the waiting count of a resource, from its rows and this process's state."""
    now = time.monotonic()
    mine = sorted(state.holders, key=lambda g: g.token) if state is not None else []
    holders = [HolderInfo(token=g.token, shared=g.shared, age=now - g.acquired_at) for g in mine]
    for r in rows:
        foreign_grant = r["pid"] not in own and r["granted"] and r["key"] != keys.gate
        if foreign_grant and _ticket_bit(r["key"], keys) is None:
            shared = semaphore or r["mode"] == "ShareLock"
            holders.append(HolderInfo(token=0, shared=shared, age=0.0))
    waiting = foreign_waiting(rows, own, keys, semaphore)
    if state is not None:
        waiting += len(state.queue) + len(state.batch)
        for request in state.deciders():
            if not request.waiting:
                continue
            if request.session is None:
                # On its way to the server queue (its try failed, or it came from the
                # local queue): no row shows it yet, but it waits all the same.
                waiting += 1
                continue
            # On its spare: counted unless the server granted it (then it is a holder,
            # or about to be recorded as one). Its rows say: queued, or (semaphores)
            # holding the gate while it waits for a slot; no row yet: its statement is on
            # its way. (A semaphore head that took its slot is no longer ``waiting``.)
            pid = request.session.pid
            its_rows = [r for r in rows if r["pid"] == pid]
            waiting += not its_rows or any(
                not r["granted"] or (semaphore and r["key"] == keys.gate) for r in its_rows
            )
    return tuple(holders), waiting
