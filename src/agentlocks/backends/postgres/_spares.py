"""The spare-session budget of the PostgreSQL backend.

A request that waits in the server's lock queue needs a connection of its own for that wait
(a *spare*), and keeps it while the grant it wins lives. ``max_spares`` bounds how many are
lent at once. When the budget is spent, a request waits here, in FIFO order, for a spare to
come back; its ``timeout`` still applies (the caller's cancellation takes it out of the line).
When the server itself refuses a connection (``max_connections``, or the role's connection
limit), the request waits in the same way for one of this backend's spares to come back, at
the front of the line; with none lent, nothing would come back, so it fails with
``BackendError``.

Deadlock. A hard bound could deadlock: a task that holds a lock asks for another key and
waits for a spare, while the spares are all taken by requests waiting for the lock that task
holds (or pinned by grants it holds). Two rules keep every wait finite:

* a request from a task that holds any grant of this process (or a child task of one: the
  record lives in a context variable, which child tasks inherit) never waits for the budget
  and may exceed it;
* a lease can also be taken in one task and held by another (``asyncio.gather`` children
  hand their leases to the parent), which no context variable sees; so ``max_spares`` is
  a soft bound: a request that has waited ``spare_patience`` seconds in line (default 1)
  takes a spare beyond it. The bound shapes bursts; it never blocks progress.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from contextvars import ContextVar

from agentlocks.backends._base import Grant

#: The grants held by the current task's context: its own, and its parent's (child tasks get
#: a copy of the context, so they share the parent's set). Released grants leave it.
_HELD: ContextVar[set[Grant] | None] = ContextVar("agentlocks_pg_held", default=None)


def holdings() -> set[Grant]:
    """The set of grants held in the current context (created on first use)."""
    held = _HELD.get()
    if held is None:
        held = set()
        _HELD.set(held)
    return held


def holds_any() -> bool:
    """Does the current task (or a task it was started from) hold a grant now?"""
    held = _HELD.get()
    return bool(held)


class SpareBudget:
    """At most ``limit`` spares lent at once; the others wait in FIFO order."""

    __slots__ = ("_line", "limit", "patience", "taken")

    def __init__(self, limit: int, patience: float) -> None:
        self.limit = limit
        self.patience = patience  # seconds in line before going over the budget
        self.taken = 0  # reservations: spares lent, being opened, or passed to a waiter
        self._line: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting in line for a spare."""
        return sum(not f.done() for f in self._line)

    def free(self, exempt: bool) -> bool:
        """Would ``take(exempt)`` reserve at once?"""
        return exempt or (self.taken < self.limit and not self._line)

    async def take(self, exempt: bool) -> None:
        """Reserve one spare; wait in line while the budget is spent (unless ``exempt``)."""
        if self.free(exempt):
            self.taken += 1
            return
        await self._wait(front=False)

    async def take_again(self) -> None:
        """Give up the caller's reservation and wait, first in line, for a spare to return.

        For a caller whose connection the server refused: the next spare given back is its.
        """
        self.taken -= 1
        await self._wait(front=True)

    async def _wait(self, front: bool) -> None:
        loop = asyncio.get_running_loop()
        turn = loop.create_future()
        if front:
            self._line.appendleft(turn)
        else:
            self._line.append(turn)
        timer = loop.call_later(self.patience, self._over_budget, turn)
        try:
            await turn  # resolved by give() or by patience: a reservation, counted already
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.give()  # passed to us as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # give() may have skipped it already
                    self._line.remove(turn)
            raise
        finally:
            timer.cancel()

    def _over_budget(self, turn: asyncio.Future[None]) -> None:
        """Patience ran out in line: take a reservation beyond the budget."""
        if turn.done():
            return
        with contextlib.suppress(ValueError):
            self._line.remove(turn)
        self.taken += 1
        turn.set_result(None)

    def give(self) -> None:
        """A reservation ends (its spare came back, was closed, or was never obtained).

        It passes to the first in line while the budget allows; requests that exceeded the
        budget (exempt ones) only bring the count back down.
        """
        if self.taken <= self.limit:
            while self._line:
                turn = self._line.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self.taken -= 1
