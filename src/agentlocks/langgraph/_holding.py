"""One guarded run, from the moment it holds its thread until it lets go.

:class:`GuardedRun` is an async context manager entered by a run that already holds its
thread (``Guard.take`` or ``acquire_thread``). Inside it, the run's LangGraph work is done
in steps (:meth:`GuardedRun.step`); leaving it ends the run:

* normally or with an error: the lease is released, awaited;
* with ``GraphDrained`` after a drain *we* asked for (``on_busy="interrupt"``): dangling
  tool calls are closed first, still holding the lease; the error propagates;
* cancelled by the drain signals after ``drain_timeout``: the same, as ``GraphDrained``;
* cancelled by the caller (a client disconnect): the lease is released in the background,
  once LangGraph has finished unwinding (never awaited in a cancelled context).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
from langgraph.errors import GraphDrained

from agentlocks.langgraph._context import current_lease
from agentlocks.langgraph._controls import Relay, drain_module, run_control
from agentlocks.langgraph._run import Guard, Held, release_after, with_lease

if TYPE_CHECKING:
    from langgraph.pregel import Pregel

__all__ = ["CANCEL_REASON", "GuardedRun"]

T = TypeVar("T")

CANCEL_REASON: Final = "agentlocks: cancelled after drain_timeout for a newer run"


class GuardedRun:
    """The context of one root run holding its thread (see the module docstring)."""

    __slots__ = (
        "_cancel_pending",
        "_cancelled",
        "_exits",
        "_graph",
        "_guard",
        "_released",
        "config",
        "control",
        "held",
        "relay",
        "step_task",
        "thread_id",
    )

    def __init__(
        self,
        graph: Pregel[Any, Any, Any, Any],
        guard: Guard,
        held: Held,
        thread_id: object,
        config: Any,
        configurable: Mapping[str, Any],
        control: Any,
    ) -> None:
        self._graph = graph
        self._guard = guard
        self.held = held
        self.thread_id = thread_id
        self._released = False
        self._cancelled = False  # the drain signals asked to cancel this run
        self._cancel_pending = False  # ... and no step has been cancelled for it yet
        self._exits: contextlib.AsyncExitStack | None = None
        self.step_task: asyncio.Future[Any] | None = None
        # May raise (a warning turned into an error): use start(), which releases then.
        guard.warn_lent_checkpointer(configurable)
        self.control = run_control(control, configurable)()
        # Only the "interrupt" strategy's drain signals are handed a relay.
        self.relay = Relay(self.control) if guard.on_busy == "interrupt" else None
        self.config: Any = with_lease(config, held.lease)  # a RunnableConfig

    async def __aenter__(self) -> GuardedRun:
        try:
            signals = self._guard.signals
            if signals is not None and self.relay is not None:
                exits = contextlib.AsyncExitStack()
                await exits.enter_async_context(
                    # The held lease says which requests are for this run (no lookup).
                    signals.watch(
                        str(self.thread_id), self.relay, self._cancel, lease=self.held.lease
                    )
                )
                self._exits = exits
        except BaseException:
            self._released = True
            release_after(self.held)  # maybe cancelled: never await here
            raise
        return self

    @classmethod
    async def start(
        cls,
        graph: Pregel[Any, Any, Any, Any],
        guard: Guard,
        held: Held,
        thread_id: object,
        config: Any,
        configurable: Mapping[str, Any],
        control: Any,
    ) -> GuardedRun:
        """Make the run for ``held``; if that fails, ``held`` is released (nothing leaks)."""
        try:
            return cls(graph, guard, held, thread_id, config, configurable, control)
        except BaseException:
            await held.release()
            raise

    def _cancel(self) -> None:
        """The drain signals' cancel request: cancel the step LangGraph is running now.

        Between two steps of a stream nothing runs for us to cancel: the next step is
        cancelled as soon as it starts (a consumer that never pulls again holds the lock
        until it closes the stream, as any stream does).
        """
        if self._cancelled:
            return
        self._cancelled = True
        task = self.step_task
        if task is not None and not task.done():
            self._cancel_pending = False
            task.cancel(CANCEL_REASON)
        else:
            self._cancel_pending = True

    async def step(self, start: Callable[[], Awaitable[T]]) -> T:
        """Run ``start()`` (a LangGraph call or one stream step) in a task of its own.

        Invariant: LangGraph's loop is cancelled at most once. Awaited in the caller's
        task, a cancel scope (anyio; Starlette on disconnect) re-cancels every await of its
        cleanup, the exit task that flushes the run's checkpoint writes included, and those
        writes would still be in flight when the next run reads the thread (a lost update).
        In its own task the work gets one cancellation and unwinds cleanly; the caller
        waits for that, shielded, before it re-raises its cancellation.
        """
        # The task copies this context: the saver and re-entering nodes see the lease.
        # Reset at once: the next step may be awaited from another task (a v3 stream
        # pumps each step in a task of its own) whose context never saw this set.
        token = current_lease.set(self.held.lease)
        try:
            task: asyncio.Future[T] = asyncio.ensure_future(start())
        finally:
            current_lease.reset(token)
        self.step_task = task
        if self._cancel_pending:
            self._cancel_pending = False
            task.cancel(CANCEL_REASON)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.cancel()
                await _settle(task)
            raise
        finally:
            self.step_task = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._exits is not None:
                await self._exits.aclose()
            if isinstance(exc, GraphDrained) and self.relay is not None and self.relay.fired:
                await self._close_dangling()
            elif isinstance(exc, asyncio.CancelledError):
                me = asyncio.current_task()
                if self._cancelled and (me is None or me.cancelling() == 0):
                    # Only our own cancel (drain_timeout elapsed) stopped the run, and
                    # LangGraph has unwound with what it had saved: it ends as drained.
                    await self._close_dangling()
                    raise GraphDrained(CANCEL_REASON) from None
                # Cancelled by the caller (a client disconnect, a timeout). The step has
                # settled, so LangGraph's exit task has flushed the run's writes. A run
                # cancelled between its model and tools steps leaves a tool call without
                # an answer, and the next turn would fail (INVALID_CHAT_HISTORY): close it
                # while still holding the thread, then release -- in the background, as
                # awaiting in a cancelled exit is re-cancelled by cancel scopes.
                self._released = True
                release_after(self.held, first=self._close_dangling)
        finally:
            if not self._released:
                self._released = True
                await self.held.release()

    async def _close_dangling(self) -> None:
        """Leave no tool call unanswered after a drain or a cancellation (still holding)."""
        close = drain_module().close_dangling_tool_calls
        await self.step(lambda: close(self._graph, self.config))


async def _settle(task: asyncio.Future[Any]) -> None:
    """Wait until ``task`` is done, whatever cancels the caller meanwhile."""
    with anyio.CancelScope(shield=True):
        while not task.done():
            # asyncio.wait never cancels what it waits for; a native cancel of the caller
            # ends only this wait, and the caller re-raises its cancellation afterwards.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: the caller reports its own cancellation instead
