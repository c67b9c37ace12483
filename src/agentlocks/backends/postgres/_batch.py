"""Coalescing of the hottest statements queued on one shared session.

A shared session runs one statement at a time. Under load, many fast-path exclusive tries
and releases queue up on it; instead of one round trip each, whatever is queued when the
connection becomes free goes out as *one* statement (``Sql.batch``): all the releases
first, then the tries in submission order, each try exactly as the single-statement fast
path does it. Releases going first is the order in which they were queued relative to any
try of the same key: a request never tries a key this process still holds (``KeyState``
refuses that locally), so a try queued with a release of its key was made after it.

Cancellation. Statements on a shared session are never cancelled on the server: the
batch runs in the worker task, whatever happens to its callers. (A cancel request can
land on a *later* statement of the connection, and a multi-lock statement cut short half
way would leave locks nobody owns.) A cancelled caller waits for its operation's outcome
and undoes a grant it no longer wants, before its cancellation propagates.

How it waits costs nothing extra: each operation's outcome is an :class:`Outcome`, a
future that refuses ``cancel()``. ``task.cancel()`` of a caller awaiting it then only
marks the task, and asyncio throws the ``CancelledError`` in once the outcome is known
(repeated cancels included), so the caller learns the outcome and can undo it. No task
and no shield stand between the worker and the caller: one loop wake-up per statement
fewer each way than ``asyncio.shield`` (the uncontended path is two statements).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentlocks._tasks import TaskSupervisor

    from ._connection import Session
    from ._sql import Sql

#: At most this many operations per statement (bounded statement size and latency).
MAX_BATCH = 256
#: Seconds an idle worker waits for more work before it ends (steady traffic keeps it).
LINGER = 1.0


class Outcome(asyncio.Future[Any]):
    """A future that cannot be cancelled: its awaiter's cancellation waits for the result.

    ``Task.cancel()`` first tries to cancel the future the task awaits; when that refuses,
    the task is only marked, and the ``CancelledError`` is thrown in at its next step: once
    this future is done. Only the worker resolves it (with a result or an exception).
    """

    def cancel(self, msg: Any = None) -> bool:
        """Refuse: the operation runs on the server whatever its caller does."""
        return False


class _Op:
    __slots__ = ("future", "gate", "hold", "shared")

    def __init__(self, gate: int | None, hold: int, shared: bool) -> None:
        self.gate = gate  # None: a release of ``hold``
        self.hold = hold
        self.shared = shared
        self.future: asyncio.Future[Any] = Outcome(loop=asyncio.get_running_loop())


class Coalescer:
    """The operation queue and worker of one shared session."""

    __slots__ = ("_ops", "_session", "_sql", "_tasks", "_wake", "_worker")

    def __init__(self, session: Session, sql: Sql, tasks: TaskSupervisor) -> None:
        self._session = session
        self._sql = sql
        self._tasks = tasks
        self._ops: list[_Op] = []
        self._worker: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None  # set while the worker idles

    def close(self) -> None:
        """Stop the worker (the session is closing)."""
        if self._worker is not None:
            self._worker.cancel()

    async def try_exclusive_now(self, gate: int, hold: int) -> Any:
        """The fast path of an exclusive lock: ``(token or None, pid)``, cancellation-safe.

        If the caller is cancelled, a grant the statement made is released before the
        cancellation propagates.
        """
        future = self.try_exclusive(gate, hold)
        try:
            return await future
        except asyncio.CancelledError:
            # Thrown only once the outcome is known (an Outcome refuses cancel()).
            outcome = _result(future)
            if outcome is not None and outcome[0] is not None:  # granted: give it back
                await _wait_out(self.release(hold, False))
            raise

    async def release_now(self, hold: int, shared: bool) -> bool:
        """Release one grant's hold key; True if the session still held it.

        Done on the server before a cancellation propagates (the Outcome waits for it).
        """
        return bool(await self.release(hold, shared))

    def try_exclusive(self, gate: int, hold: int) -> asyncio.Future[Any]:
        """The fast path of an exclusive lock; resolves to ``(token or None, pid)``."""
        return self._queue(_Op(gate, hold, False))

    def release(self, hold: int, shared: bool) -> asyncio.Future[Any]:
        """Unlock one grant's hold key on this session; resolves to the unlock's answer."""
        return self._queue(_Op(None, hold, shared))

    def _queue(self, op: _Op) -> asyncio.Future[Any]:
        self._ops.append(op)
        self._session.pending += 1
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)
        elif self._worker is None or self._worker.done():
            self._worker = self._tasks.spawn(self._run(), name="postgres statement batches")
        return op.future

    async def _run(self) -> None:
        session = self._session
        loop = asyncio.get_running_loop()
        while True:
            if not self._ops:
                # Idle: wait a while for more work (cheaper than a new task per statement).
                wake = self._wake = loop.create_future()
                timer = loop.call_later(LINGER, _resolve, wake)
                try:
                    await wake
                except asyncio.CancelledError:
                    self._fail_queued()
                    raise
                finally:
                    timer.cancel()
                    self._wake = None
                if not self._ops:
                    return
            ops, self._ops = self._ops[:MAX_BATCH], self._ops[MAX_BATCH:]
            try:
                async with session.lock:
                    results = await self._execute(ops)
            except BaseException as exc:
                # Cancelled only by close(): its callers see a lost connection, not a
                # cancellation of their own.
                error = (
                    ConnectionError("the session was closed")
                    if isinstance(exc, asyncio.CancelledError)
                    else exc
                )
                for op in ops:
                    session.pending -= 1
                    if not op.future.done():
                        op.future.set_exception(error)
                if isinstance(exc, asyncio.CancelledError):
                    self._fail_queued()
                    raise
                continue
            session.last_ok = time.monotonic()
            for op, result in zip(ops, results, strict=True):
                session.pending -= 1
                if not op.future.done():
                    op.future.set_result(result)

    def _fail_queued(self) -> None:
        """The worker is stopping for good: fail what is still queued."""
        ops, self._ops = self._ops, []
        for op in ops:
            self._session.pending -= 1
            if not op.future.done():
                op.future.set_exception(ConnectionError("the session was closed"))

    async def _execute(self, ops: list[_Op]) -> list[Any]:
        conn, sql = self._session.conn, self._sql
        if len(ops) == 1:
            (op,) = ops
            if op.gate is not None:
                row = await conn.fetchrow(sql.try_exclusive, op.gate, op.hold)
                return [(row[0], row[1])]
            row = await conn.fetchrow(
                sql.unlock_shared if op.shared else sql.unlock_exclusive, op.hold
            )
            return [row[0]]
        tries = [op for op in ops if op.gate is not None]
        releases = [op for op in ops if op.gate is None]
        row = await conn.fetchrow(
            sql.batch,
            [op.hold for op in releases],
            [op.shared for op in releases],
            [op.gate for op in tries],
            [op.hold for op in tries],
        )
        tokens = iter(row[0] or [])
        unlocked = iter(row[2] or [])
        pid = row[1]
        return [next(unlocked) if op.gate is None else (next(tokens), pid) for op in ops]


async def _wait_out(future: asyncio.Future[Any]) -> Any:
    """Wait for an Outcome whatever happens to the caller; its result, or None."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await future
    return _result(future)


def _result(future: asyncio.Future[Any]) -> Any:
    """A done future's result; None if it failed (or, unfinished, if not done)."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return None
    return future.result()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
