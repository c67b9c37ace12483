"""Flow control for Redis calls: one timer for every call's deadline, and FIFO gates.

``CallTimer``. ``asyncio.timeout()`` around each call costs a timer handle, a context
object and a heap push per call: on a small machine, a sizeable share of the driver's own
work for a script call. Calls here only register their task and deadline in a dict; one
timer, armed at the earliest deadline, cancels the calls that outlive theirs. With steady
traffic it fires about once per ``seconds``. A call the timer cancelled sees
``CancelledError``; :meth:`CallTimer.expired` tells that apart from a cancellation by
anyone else. The driver drops a connection whose call was cancelled mid-flight, so no
reply is ever read by the wrong caller.

``Gate``. A FIFO admission with a number of places whose fast path does not suspend (an
``asyncio.Semaphore`` creates a coroutine per entry). A place that is given back goes
straight to the longest waiter, so nobody barges ahead of earlier arrivals, except an
*urgent* entry (lease renewal), which waits at the front: a renewal has a deadline set by
its lease, so it must only ever wait for a call in flight, never for a queue of others.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["CallTimer", "Gate"]


class CallTimer:
    """Cancels calls that run longer than ``seconds``."""

    __slots__ = ("_armed_at", "_calls", "_expired", "_handle", "_seconds")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._calls: dict[asyncio.Task[object], float] = {}  # task -> deadline (loop time)
        self._expired: set[asyncio.Task[object]] = set()  # cancelled by us, not yet told
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0  # loop time the handle fires at

    @property
    def seconds(self) -> float:
        """The default bound of a call (``socket_timeout``)."""
        return self._seconds

    def start(self, seconds: float | None = None) -> asyncio.Task[object]:
        """Bound the current task's call from now; return the task for :meth:`stop`.

        ``seconds`` shortens the bound of this call (never beyond the default).
        """
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        loop = task.get_loop()
        if seconds is None or seconds > self._seconds:
            seconds = self._seconds
        deadline = loop.time() + seconds
        self._calls[task] = deadline
        handle = self._handle
        if handle is None or deadline < self._armed_at:
            # Only a shortened call can be due before the armed timer: re-arm for it.
            if handle is not None:
                handle.cancel()
            self._handle = loop.call_at(deadline, self._fire)
            self._armed_at = deadline
        return task

    def stop(self, task: asyncio.Task[object]) -> None:
        """The call of ``task`` is over (whatever its outcome)."""
        self._calls.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """True if the ``CancelledError`` that ``task`` sees is this timer's alone.

        Consumes the timer's cancel request; False if someone else cancelled the task
        too (or only), whose cancellation must then propagate.
        """
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    def _fire(self) -> None:
        self._handle = None
        if not self._calls:
            return
        loop = next(iter(self._calls)).get_loop()
        now = loop.time()
        for task, deadline in list(self._calls.items()):
            if deadline <= now:
                del self._calls[task]
                self._expired.add(task)
                task.cancel()
        if self._calls:
            self._armed_at = min(self._calls.values())
            self._handle = loop.call_at(self._armed_at, self._fire)


class Gate:
    """FIFO admission: at most ``places`` holders; the others wait in arrival order."""

    __slots__ = ("_waiters", "free")

    def __init__(self, places: int) -> None:
        self.free = places
        self._waiters: deque[asyncio.Future[None]] = deque()

    def enter_now(self) -> bool:
        """Take a place if one is free and nobody waits; never suspends."""
        if self.free > 0:
            self.free -= 1
            return True
        return False

    async def enter(self, *, urgent: bool = False) -> None:
        """Wait for a place (call after :meth:`enter_now` said no).

        ``urgent`` waits at the front of the line, for the next place given back.
        """
        turn = asyncio.get_running_loop().create_future()
        if urgent:
            self._waiters.appendleft(turn)
        else:
            self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave()  # handed a place just as we were cancelled: pass it on
            else:
                self._waiters.remove(turn)
            raise

    def leave(self) -> bool:
        """Give a place back: to the longest waiter if any (True), else free it (False)."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return True
        self.free += 1
        return False
