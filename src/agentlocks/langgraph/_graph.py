"""``guard_graph``: a compiled graph whose runs hold their thread's lock from start to end.

The guarded graph is the same graph (same nodes, channels, checkpointer), as an instance of
a subclass of the wrapped graph's own class that overrides the few entry points every run
goes through: ``astream`` (``astream_events`` v1/v2/v3 reach it), ``ainvoke`` (``abatch``,
``with_retry`` and ``bind`` reach it) and ``abulk_update_state`` (``aupdate_state`` reaches
it). So nothing can slip past the lock by calling a method this module forgot, and
``isinstance(guarded, CompiledStateGraph)`` still holds. A run's work is done by
:class:`~._holding.GuardedRun`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list, var_child_runnable_config
from langgraph._internal._config import ensure_config
from langgraph.pregel import Pregel
from langgraph.runtime import RunControl
from langgraph.types import StateUpdate

from agentlocks._lease import Lease
from agentlocks.coordinator import Coordinator
from agentlocks.errors import ConfigError

from ._context import LEASE_KEY, current_lease, thread_key
from ._controls import PARENT_CONTROL_KEY
from ._holding import GuardedRun
from ._run import TASK_ID, Guard, Held, OnBusy, is_nested, with_lease

__all__ = ["GuardedGraph", "guard_graph"]

_classes: dict[type[Pregel[Any, Any, Any, Any]], type[GuardedGraph]] = {}


class GuardedGraph(Pregel[Any, Any, Any, Any]):
    """A compiled LangGraph graph whose runs hold their thread's lock. See :func:`guard_graph`.

    Use the object ``guard_graph`` returns in place of the compiled graph; every other
    attribute and method is the graph's own.
    """

    _agentlocks_guard: Guard

    # -- runs -------------------------------------------------------------------------------

    def astream(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
        """``Pregel.astream``, holding the thread's lock until the stream ends or is closed."""
        if _marked_nested(config):
            # The hot path of every guarded ainvoke (Pregel.ainvoke streams through here
            # with the run's own config) and of subgraph calls: LangGraph's own stream,
            # with no generator of ours around each chunk.
            return super().astream(input, config, **kwargs)
        return self._guarded(None, input, config, kwargs)

    async def abatch(self, inputs: Sequence[Any], config: Any = None, **kwargs: Any) -> list[Any]:
        """``Pregel.abatch``: each item is its own run, with its own lock and ``RunControl``."""
        config = _per_item(config, len(inputs), kwargs)
        return await super().abatch(list(inputs), config, **kwargs)

    async def abatch_as_completed(
        self, inputs: Sequence[Any], config: Any = None, **kwargs: Any
    ) -> AsyncIterator[tuple[int, Any]]:
        """``Pregel.abatch_as_completed``: each item its own run, lock and ``RunControl``."""
        config = _per_item(config, len(inputs), kwargs)
        async for item in super().abatch_as_completed(inputs, config, **kwargs):
            yield item

    async def abulk_update_state(
        self, config: Any, supersteps: Sequence[Sequence[StateUpdate]]
    ) -> Any:
        """``Pregel.abulk_update_state`` (and ``aupdate_state``), holding the thread's lock.

        It waits for a running run (``"reject"`` raises ``ThreadBusy`` instead); it never
        interrupts one, whatever ``on_busy`` says.
        """
        guard = self._agentlocks_guard
        configurable = ensure_config(self.config, config)["configurable"]
        thread_id = configurable.get("thread_id")
        if thread_id is None or is_nested(configurable, thread_id):
            return await super().abulk_update_state(config, supersteps)
        held = await guard.take(thread_id, for_update=True)
        token = current_lease.set(held.lease)
        try:
            locked = cast("RunnableConfig", with_lease(config, held.lease))
            return await super().abulk_update_state(locked, supersteps)
        finally:
            current_lease.reset(token)
            # The update is one read-modify-write awaited here: no exit task outlives it.
            await held.release()

    # -- sync entry points: refused (agentlocks is asyncio-only) --------------------------

    def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Iterator[Any]:
        """Refused at the root (the lock is async): use ``astream``; nested calls pass."""
        self._refuse_sync(config, "stream/invoke/batch")
        return super().stream(input, config, **kwargs)

    def bulk_update_state(self, config: Any, supersteps: Sequence[Sequence[StateUpdate]]) -> Any:
        """Refused at the root (the lock is async): use ``abulk_update_state``."""
        self._refuse_sync(config, "update_state/bulk_update_state")
        return super().bulk_update_state(config, supersteps)

    def _refuse_sync(self, config: Any, what: str) -> None:
        configurable = ensure_config(self.config, config)["configurable"]
        thread_id = configurable.get("thread_id")
        if thread_id is not None and not is_nested(configurable, thread_id):
            raise RuntimeError(
                f"a guard_graph graph cannot {what} synchronously: agentlocks is asyncio-only "
                "and the thread lock is taken with await; call the a-prefixed method instead "
                "(ainvoke, astream, abatch, aupdate_state)"
            )

    # -- copies stay guarded ----------------------------------------------------------------

    def copy(self, update: dict[str, Any] | None = None) -> Any:
        """``Pregel.copy`` (and so ``with_config``), sharing this graph's guard."""
        guard = self._agentlocks_guard
        new = super().copy(update)
        new._agentlocks_guard = guard
        return new

    # -- HTTP: decide first, stream later ---------------------------------------------------

    async def acquire_thread(self, thread_id: str) -> Lease:
        """Take ``thread_id``'s lock (and a run slot) as ``on_busy`` says; return its lease.

        Call it before the response starts, so ``ThreadBusy`` (409) or ``AcquireTimeout`` /
        ``QueueFull`` (503) can still be sent; then hand the lease to :meth:`stream_with`
        (or give it back with :meth:`release_thread`).
        """
        guard = self._agentlocks_guard
        held = await guard.take(thread_id)
        if held.slot is not None:
            guard.slots[held.lease] = held.slot
        return held.lease

    async def release_thread(self, lease: Lease) -> None:
        """Give back a lease from :meth:`acquire_thread` that no stream will use."""
        slot = self._agentlocks_guard.slots.pop(lease, None)
        await Held(lease, slot).release()

    def stream_with(
        self,
        lease: Lease,
        input: Any,
        config: Any = None,
        *,
        encode: Callable[[Any], str | bytes] | None = None,
        **stream_kwargs: Any,
    ) -> Any:
        """Run ``astream`` under a lease from :meth:`acquire_thread`, as a response body.

        The result is an async iterator with its own ``aclose()``, usable as a Starlette
        ``StreamingResponse`` body: the lease is freed when the stream ends, fails, is
        cancelled (client disconnect), or is closed or dropped without being iterated.
        ``encode`` turns each chunk into ``str``/``bytes`` (default: one JSON line each;
        ``str`` and ``bytes`` chunks pass unchanged).
        """
        from ._streams import LeasedStream, ndjson

        thread_id = ensure_config(self.config, config)["configurable"].get("thread_id")
        if lease.released or lease.key != thread_key(thread_id):
            raise ValueError(
                f"stream_with needs the held lease of the config's thread {thread_id!r} "
                f"(from acquire_thread), got {lease!r}"
            )
        slot = self._agentlocks_guard.slots.pop(lease, None)
        held = Held(lease, slot)
        return LeasedStream(
            held,
            lambda: self._guarded(held, input, config, stream_kwargs),
            encode or ndjson,
        )

    async def aclose(self) -> None:
        """Stop what the ``"interrupt"`` strategy listens with (call on shutdown)."""
        await self._agentlocks_guard.aclose()

    # -- the run ----------------------------------------------------------------------------

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """``Pregel.ainvoke``, holding the thread's lock for the whole run.

        Also reachable through ``astream``; done here as one step (one task for the whole
        run instead of one per chunk), the hot path of most applications.
        """
        guard = self._agentlocks_guard
        configurable = _configurable(self, config)
        thread_id = configurable.get("thread_id")
        invoke = super().ainvoke
        if thread_id is None or is_nested(configurable, thread_id):
            return await invoke(input, config, **kwargs)
        held = await guard.take(thread_id)
        control = kwargs.pop("control", None)
        run = await GuardedRun.start(self, guard, held, thread_id, config, configurable, control)
        async with run:
            return await run.step(lambda: invoke(input, run.config, control=run.control, **kwargs))

    async def _guarded(
        self, held: Held | None, input: Any, config: Any, kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        guard = self._agentlocks_guard
        configurable = _configurable(self, config)
        thread_id = configurable.get("thread_id")
        stream = super().astream
        if held is None and (thread_id is None or is_nested(configurable, thread_id)):
            # A subgraph, a re-entry, or a graph without a thread: the run (or no one) holds.
            passing = cast("AsyncGenerator[Any, None]", stream(input, config, **kwargs))
            async with contextlib.aclosing(passing):
                async for chunk in passing:
                    yield chunk
            return
        if held is None:
            held = await guard.take(thread_id)
        control = kwargs.pop("control", None)
        run = await GuardedRun.start(self, guard, held, thread_id, config, configurable, control)
        async with run:
            inner = cast(
                "AsyncGenerator[Any, None]",
                stream(input, run.config, control=run.control, **kwargs),
            )
            async with contextlib.aclosing(inner):
                while True:
                    try:
                        chunk = await run.step(inner.__anext__)
                    except StopAsyncIteration:
                        break
                    yield chunk


def _configurable(graph: Pregel[Any, Any, Any, Any], config: Any) -> Mapping[str, Any]:
    """``ensure_config(graph.config, config)["configurable"]``, without the merge if it is moot.

    LangGraph merges the ``configurable`` of the calling context (a parent run's), of the
    graph's own config (``with_config``) and of the explicit config, and merges the whole
    config again inside ``Pregel.ainvoke``. When the first two are empty the merged
    ``configurable`` is the explicit one: read it as is (only read, never changed), and
    leave the one full merge to LangGraph.
    """
    if isinstance(config, dict) and var_child_runnable_config.get() is None:
        own = graph.config
        if not own or not own.get("configurable"):
            configurable = config.get("configurable")
            if isinstance(configurable, dict) and configurable:
                return configurable
    return ensure_config(graph.config, config)["configurable"]


def _marked_nested(config: Any) -> bool:
    """Does ``config`` itself say the call is part of a run holding its thread?

    The same decision :func:`~._run.is_nested` makes on the merged config, taken from the
    explicit config alone, so it cannot depend on the context the stream is iterated in:
    ``ensure_config`` keeps every explicit ``configurable`` entry (the thread id and the
    lease marker among them), so the merged config says the same.
    """
    if not isinstance(config, dict):
        return False
    configurable = config.get("configurable")
    if not isinstance(configurable, dict):
        return False
    if TASK_ID in configurable:
        return True
    lease = configurable.get(LEASE_KEY)
    thread_id = configurable.get("thread_id")
    return isinstance(lease, Lease) and thread_id is not None and lease.key == thread_key(thread_id)


def _per_item(config: Any, count: int, kwargs: dict[str, Any]) -> list[Any]:
    """One config per batch item; a caller's ``control=`` rides in each, to be linked."""
    configs = get_config_list(config, count)
    control = kwargs.pop("control", None)
    if control is None:
        return configs
    if not isinstance(control, RunControl):
        raise TypeError(f"control must be a langgraph RunControl, got {control!r}")
    out = []
    for item in configs:
        configurable = {**(item.get("configurable") or {}), PARENT_CONTROL_KEY: control}
        out.append({**item, "configurable": configurable})
    return out


def _guarded_class(cls: type[Pregel[Any, Any, Any, Any]]) -> type[GuardedGraph]:
    """The guarded subclass of ``cls``, made once per class."""
    made = _classes.get(cls)
    if made is None:
        made = cast(
            "type[GuardedGraph]",
            type(f"Guarded{cls.__name__}", (GuardedGraph, cls), {"__module__": __name__}),
        )
        _classes[cls] = made
    return made


def guard_graph(
    graph: Pregel[Any, Any, Any, Any],
    coord: Coordinator,
    *,
    on_busy: OnBusy = "enqueue",
    timeout: float | None = None,
    max_waiting: int | None = None,
    max_concurrent_runs: int | None = None,
    drain_timeout: float = 30.0,
) -> GuardedGraph:
    """Make every run of ``graph`` hold its thread's lock, across processes.

    Args:
        graph: A compiled graph (``builder.compile(checkpointer=...)``).
        coord: The coordinator whose backend holds the locks.
        on_busy: What a run on a running thread does: ``"enqueue"`` waits FIFO;
            ``"reject"`` raises ``ThreadBusy`` (HTTP 409); ``"interrupt"`` asks the running
            run, in any process, to stop at its next step boundary, and cancels it if it has
            not stopped within ``drain_timeout`` seconds.
        timeout: Seconds to wait for the thread (and a run slot): ``AcquireTimeout``.
        max_waiting: Runs that may wait per thread, cluster-wide: ``QueueFull``.
        max_concurrent_runs: Cluster-wide cap on guarded runs, taken after the thread lock.
        drain_timeout: ``"interrupt"`` only: seconds a running node may finish in.

    What callers see:

    * A run waits for (or is refused) its thread before it reads any state; the lock is
      ``f"langgraph:{thread_id}"``, held until the run ends: for a stream, until it is
      exhausted, fails, is closed (``aclose()``, a v3 ``abort()``) or cancelled. A stream
      never iterated never takes the lock. A stream closed or cancelled mid-run closes a tool
      call the model asked for and no tool answered (a ``ToolMessage`` saying it was
      interrupted), so the thread's next turn does not fail on an invalid history.
    * Cancellation (a client disconnect) reaches LangGraph once and the lock is freed only
      after LangGraph has unwound and flushed the run's writes, so the next run reads them.
    * A subgraph call, or a node re-entering the same thread, passes through (it is part of
      the run that holds the lock). A run waiting in ``interrupt()`` for a human holds
      nothing; the resume takes the lock again.
    * ``aupdate_state`` / ``abulk_update_state`` wait for a running run (``"reject"``
      raises ``ThreadBusy``); they never interrupt one.
    * With ``"interrupt"``, the stopped run raises ``langgraph.errors.GraphDrained`` (its
      checkpoint saved; a tool call left unanswered is closed with a ``ToolMessage`` first);
      its ``RunControl`` is the caller's ``control=`` if one was passed.
    * ``abatch`` runs each item with its own lock and ``RunControl`` (a ``control=`` given
      to ``abatch`` drains every item, and draining one item drains only that one).
    * Sync ``invoke``/``stream``/``batch``/``update_state`` raise ``RuntimeError``: the lock
      is async-only (nested sync calls inside a guarded run still pass through).
    * A checkpointer lent through ``config["configurable"]["__pregel_checkpointer"]``
      (as servers do) bypasses the graph's own: a ``RuntimeWarning`` says so, once.

    Raises:
        ConfigError: A bad option (before any I/O).

    Example:
        >>> import agentlocks
        >>> from langgraph.checkpoint.memory import InMemorySaver
        >>> from langgraph.graph import MessagesState, StateGraph
        >>> builder = StateGraph(MessagesState)
        >>> _ = builder.add_node("reply", lambda state: {"messages": [("ai", "hi")]})
        >>> _ = builder.set_entry_point("reply")
        >>> graph = guard_graph(builder.compile(checkpointer=InMemorySaver()),
        ...                     agentlocks.connect(), on_busy="reject")
        >>> type(graph).__name__
        'GuardedCompiledStateGraph'
    """
    if not isinstance(graph, Pregel):
        raise ConfigError(f"guard_graph needs a compiled LangGraph graph, got {graph!r}")
    if isinstance(graph, GuardedGraph):
        raise ConfigError(f"{graph!r} is already guarded")
    guard = Guard(coord, on_busy, timeout, max_waiting, max_concurrent_runs, drain_timeout)
    guarded = object.__new__(_guarded_class(type(graph)))
    # The same graph, not a rebuilt one: share its attributes as Pregel.copy() would.
    guarded.__dict__.update(graph.__dict__)
    guarded._agentlocks_guard = guard
    return guarded
