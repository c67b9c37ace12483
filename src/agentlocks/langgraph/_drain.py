"""``on_busy="interrupt"``: ask the run holding a thread, in any process, to make way.

The guard's side (``_graph.py``): a run that finds its thread busy calls
:meth:`DrainSignals.request_drain`, waits for the thread lock, and if it is not granted
within the drain timeout calls :meth:`DrainSignals.request_cancel`. The running run's
side: right after it took the thread lock it enters :meth:`DrainSignals.watch`, which turns
a drain request into LangGraph's ``RunControl.request_drain()`` (the loop stops before its
next superstep, with its checkpoint saved, and raises ``GraphDrained``) and a cancel
request into ``cancel()``. After a drain, :func:`close_dangling_tool_calls` leaves a valid
chat history.

Which run a request is for. A request is sent through the coordinator's backend as a
*signal* to the holders of the thread lock (``Backend.signal``): it carries a *mark*, a
fresh fencing token, greater than the token of every grant made before it and smaller
than every later one. A watching run acts on a request only if the mark exceeds its own
lease token. So a request reaches exactly the runs that held the thread when it was sent
(also one that has the lock but has not started watching yet: it finds the stored record
when it does), and never the run the requester itself starts next, nor any later one:
nothing needs withdrawing when a requester is granted, gives up or dies.

Durability. Each request is a record in the backend (``ttl``, default 120 s) as well as a
pushed message: a watch reads the records when it starts and again after its
subscription reconnects, so a lost message only delays a request until the reconnect.
As a last resort, the requester's cancel request is a second, independent signal.

A cancel request never cuts short a run that was not asked to drain first, a whole drain
timeout earlier: :meth:`request_cancel` reuses the mark of the same requester's drain
request, so it reaches only the runs that drain request reached. If the thread changed
hands in between (several runs were waiting), the run holding it now is only asked to
drain.

Costs, per run in ``"interrupt"`` mode: one round trip to read the records when the watch
starts (plus, once per process, a pub/sub or LISTEN connection); per request, one round
trip. Nothing while nobody interrupts: no polling, no timers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

from agentlocks._keys import check_key
from agentlocks._lease import Lease
from agentlocks._tasks import finish
from agentlocks.errors import BackendError, ConfigError

from ._context import current_lease

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig
    from langgraph.pregel import Pregel
    from langgraph.runtime import RunControl

    from agentlocks.coordinator import Coordinator

__all__ = [
    "DRAIN_REASON",
    "INTERRUPTED_TOOL_CALL",
    "DrainSignals",
    "close_dangling_tool_calls",
    "thread_key",
]

logger = logging.getLogger("agentlocks")

#: ``GraphDrained.reason`` of a run drained by a newer run on its thread.
DRAIN_REASON: Final = "interrupted by a newer run on this thread"
#: The content of the ToolMessage that closes a tool call a drained run never ran.
INTERRUPTED_TOOL_CALL: Final = (
    "Tool call not run: the run was interrupted by a newer request on this thread."
)
DRAIN: Final = "drain"
CANCEL: Final = "cancel"
_SIGNAL_METHODS: Final = ("signal", "watch_signals", "clear_signal")
START: Final = "__start__"  # langgraph.constants.START, without importing langgraph here
_LENT_CHECKPOINTER: Final = "__pregel_checkpointer"  # a server's config-lent saver


def thread_key(thread_id: str) -> str:
    """The lock key of a LangGraph thread (what ``guard_graph`` acquires)."""
    return f"langgraph:{thread_id}"


class _Sent:
    """A drain request this process sent: who sent it, its mark, and when."""

    __slots__ = ("at", "mark", "task")

    def __init__(self, task: asyncio.Task[Any] | None, mark: int) -> None:
        self.task = task
        self.mark = mark
        self.at = time.monotonic()


class DrainSignals:
    """Drain and cancel requests for the runs of one guarded graph, across processes.

    Args:
        coord: The coordinator whose thread locks the runs hold.
        ttl: Seconds a request stays stored in the backend for a run that has not seen
            it yet (it is cleared as soon as a run acted on it).
    """

    def __init__(self, coord: Coordinator, *, ttl: float = 120.0) -> None:
        backend = coord.backend
        missing = [name for name in _SIGNAL_METHODS if not hasattr(backend, name)]
        if missing:
            raise ConfigError(
                f'on_busy="interrupt" needs a backend with {", ".join(missing)}; '
                f"{type(backend).__name__} has none"
            )
        if not ttl > 0:
            raise ConfigError(f"ttl must be > 0, got {ttl!r}")
        self._coord = coord
        self._backend = backend
        self._ttl = float(ttl)
        self._sent: dict[str, list[_Sent]] = {}  # thread id -> drain requests sent lately

    def __repr__(self) -> str:
        return f"DrainSignals(coord={self._coord!r}, ttl={self._ttl:g})"

    @staticmethod
    def _resource(thread_id: str) -> str:
        key = thread_key(thread_id)
        check_key(key)
        return "l:" + key  # the lock's resource: marks compare with its tokens

    # -- the requester's side ----------------------------------------------------------------

    async def request_drain(self, thread_id: str) -> None:
        """Ask the run holding ``thread_id`` now (in any process) to stop at its next step.

        Raises:
            BackendError: The backend could not store the request.
        """
        mark = await self._backend.signal(self._resource(thread_id), DRAIN, ttl=self._ttl)
        sent = self._recent(thread_id)
        sent.append(_Sent(asyncio.current_task(), mark))

    async def request_cancel(self, thread_id: str) -> None:
        """Cancel the run that this requester's drain request reached, if it still runs.

        Reuses the mark of the calling task's last drain request on ``thread_id`` (or of
        this process's oldest recent one), so a run that was not asked to drain is never
        cancelled. Whoever holds the thread now is asked to drain too: if it changed hands
        since the drain request, the new holder was never asked.
        """
        resource = self._resource(thread_id)
        sent = self._recent(thread_id)
        task = asyncio.current_task()
        mine = [s for s in sent if s.task is task] or sent[:1]
        if mine:
            await self._backend.signal(resource, CANCEL, ttl=self._ttl, mark=mine[-1].mark)
            for entry in mine:
                sent.remove(entry)
            if not sent:
                self._sent.pop(thread_id, None)
        else:  # no drain request of ours: the run holding the thread now
            await self._backend.signal(resource, CANCEL, ttl=self._ttl)
        await self._backend.signal(resource, DRAIN, ttl=self._ttl)

    def _recent(self, thread_id: str) -> list[_Sent]:
        # Bounded state: entries older than the records they stand for are forgotten.
        horizon = time.monotonic() - self._ttl
        for tid in [t for t, s in self._sent.items() if s[0].at < horizon]:
            kept = [s for s in self._sent[tid] if s.at >= horizon]
            if kept:
                self._sent[tid] = kept
            else:
                del self._sent[tid]
        return self._sent.setdefault(thread_id, [])

    # -- the running run's side --------------------------------------------------------------

    def watch(
        self,
        thread_id: str,
        control: RunControl,
        cancel: Callable[[], None],
        *,
        lease: Lease | None = None,
    ) -> AbstractAsyncContextManager[None]:
        """While inside, turn requests for this run into ``control.request_drain()`` / ``cancel()``.

        Enter it right after taking the thread lock (``lease``: that lock's lease; by
        default the guarded run's lease of ``thread_id`` from the context). Entering
        costs one round trip: it returns once requests are pushed to it and those stored
        before were applied. On exit, the requests it acted on are cleared.
        """
        return self._watch(thread_id, control, cancel, lease)

    @asynccontextmanager
    async def _watch(
        self,
        thread_id: str,
        control: RunControl,
        cancel: Callable[[], None],
        lease: Lease | None,
    ) -> AsyncIterator[None]:
        resource = self._resource(thread_id)
        token = await self._token(thread_id, lease)
        watcher = _Watcher(token, control, cancel)
        try:
            async with self._backend.watch_signals(resource, watcher.deliver):
                yield
        finally:
            watcher.closed = True
            if watcher.seen:
                await self._clear(resource, watcher.seen)

    async def _token(self, thread_id: str, lease: Lease | None) -> int:
        key = thread_key(thread_id)
        if lease is None:
            lease = current_lease.get()
            if lease is not None and lease.key != key:
                lease = None
        if lease is not None:
            if lease.key != key:
                raise ValueError(f"lease is for {lease.key!r}, not {key!r}")
            return lease.token
        info = await self._coord.inspect(key)  # not given and not in context: ask
        exclusive = [h.token for h in info.holders if not h.shared]
        if not exclusive:
            raise RuntimeError(f"watch({thread_id!r}) needs the thread lock {key!r} held")
        return max(exclusive)

    async def _clear(self, resource: str, seen: dict[str, int]) -> None:
        # Run to its end under finish(): this runs while a cancelled run unwinds, and may be
        # cancelled again. Best effort: a record left behind expires, and it can never reach
        # a later run (its mark is below their tokens).
        async def clear() -> None:
            for kind, mark in seen.items():
                try:
                    await self._backend.clear_signal(resource, kind, mark)
                except BackendError as exc:
                    logger.warning("could not clear a %s request; it expires: %s", kind, exc)

        await finish(clear())

    async def aclose(self) -> None:
        """Forget the requests sent (the backend's records expire by themselves)."""
        self._sent.clear()


class _Watcher:
    """What one watching run does with the signals delivered to it."""

    __slots__ = ("cancel", "cancelled", "closed", "control", "seen", "token")

    def __init__(self, token: int, control: RunControl, cancel: Callable[[], None]) -> None:
        self.token = token
        self.control = control
        self.cancel = cancel
        self.cancelled = False
        self.closed = False
        self.seen: dict[str, int] = {}  # kind -> highest mark acted on (cleared at exit)

    def deliver(self, kind: str, mark: int) -> None:
        # Idempotent (records are delivered again after a reconnect) and never blocks.
        if self.closed or mark <= self.token:
            return  # sent before this run was granted: for an earlier run
        if kind not in (DRAIN, CANCEL):
            return
        self.seen[kind] = max(mark, self.seen.get(kind, 0))
        if not self.control.drain_requested:
            self.control.request_drain(DRAIN_REASON)
        if kind == CANCEL and not self.cancelled:
            self.cancelled = True
            self.cancel()


# -- a valid chat history after a drain -------------------------------------------------------


async def close_dangling_tool_calls(
    graph: Pregel[Any, Any, Any, Any], config: RunnableConfig, *, messages_key: str = "messages"
) -> None:
    """Leave the thread of a drained (or cancelled) run valid for the next run.

    Two repairs, each a no-op when not needed; call it while still holding the thread lock:

    * A drain that landed before the run's first step (the request was waiting when the
      run started) leaves its input unapplied, pending as ``next=('__start__',)``; a run
      with new input would drop it, losing the user's message. The pending input is
      applied (``aupdate_state(..., as_node="__start__")``), as the first step would have.
    * A drain between the model step and the tools step leaves the last ``AIMessage`` with
      ``tool_calls`` and ``next=('tools',)``; a run with new input does not run those
      tools, and the next model call would fail (``INVALID_CHAT_HISTORY``; providers answer
      400). Each unanswered call gets a ``ToolMessage`` saying it was interrupted, written
      with ``aupdate_state(..., as_node=<the pending tools node>)``: the pending task
      counts as done, so it does not run later either.
    """
    snapshot = await graph.aget_state(config)
    if START in snapshot.next:
        await _apply_pending_input(graph, config)
        snapshot = await graph.aget_state(config)
    closing = _closing_messages(snapshot.values, messages_key)
    if not closing:
        return
    pending = tuple(snapshot.next)
    as_node = "tools" if "tools" in pending else (pending[0] if pending else None)
    await graph.aupdate_state(config, {messages_key: closing}, as_node=as_node)


async def _apply_pending_input(graph: Pregel[Any, Any, Any, Any], config: RunnableConfig) -> None:
    from langgraph.checkpoint.base import BaseCheckpointSaver

    saver = (config.get("configurable") or {}).get(_LENT_CHECKPOINTER) or graph.checkpointer
    if not isinstance(saver, BaseCheckpointSaver):
        return
    saved = await saver.aget_tuple(config)
    if saved is None:
        return
    value = saved.checkpoint.get("channel_values", {}).get(START)
    if value is not None:
        await graph.aupdate_state(config, value, as_node=START)


def _closing_messages(values: object, messages_key: str) -> list[Any]:
    """A ``ToolMessage`` for each tool call of the last ``AIMessage`` that has no answer."""
    from langchain_core.messages import AIMessage, ToolMessage

    messages = values.get(messages_key) if isinstance(values, dict) else None
    if not isinstance(messages, Sequence) or not messages:
        return []
    last_ai = next(
        (i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], AIMessage)), None
    )
    if last_ai is None:
        return []
    answered = {m.tool_call_id for m in messages[last_ai + 1 :] if isinstance(m, ToolMessage)}
    ai = messages[last_ai]
    assert isinstance(ai, AIMessage)
    return [
        ToolMessage(
            content=INTERRUPTED_TOOL_CALL,
            tool_call_id=str(call["id"]),
            name=call["name"],
            status="error",
        )
        for call in ai.tool_calls
        if call.get("id") not in answered
    ]
