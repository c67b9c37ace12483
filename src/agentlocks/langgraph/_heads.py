"""The per-thread head record that lets ``guard_checkpointer`` refuse lost updates.

A LangGraph run reads its thread's head checkpoint once and writes a chain of children
(``LANGGRAPH-NOTES.md``). Two runs that read the same head both write a child of it; the
saver keeps both and calls the later one "latest", and the other run's work is silently
gone. So the coordinator's backend keeps, per ``(thread, checkpoint_ns)``, the id of the
checkpoint the wrapper last let through (``HeadStore`` in ``backends/_capabilities.py``), and
every ``put`` compare-and-swaps it, parent -> child, with the run's fencing token, in one
round trip. What a put expects:

* it has a parent: the parent must be the head (a run that read the head and wrote on);
* its parent was read by an explicit ``checkpoint_id`` in this context (time travel,
  ``update_state`` on an old checkpoint): nothing, it is an intentional fork;
* it has no parent, and this context read the thread and found nothing: the record must
  be absent (two first runs on a new thread race too);
* it has no parent otherwise: nothing, it is a fork (a saver's user writing a fresh root).

A record absent (expired, or the thread predates the wrapper) accepts a put and starts
tracking. The marks of "read explicitly" and "read nothing", and the plan of one put, are
in ``_put_plans.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar, cast

import anyio

from agentlocks._lease import Lease
from agentlocks.backends._capabilities import HeadStore, HeadSwap
from agentlocks.backends._memory_heads import HeadTable
from agentlocks.backends.memory import MemoryBackend
from agentlocks.coordinator import Coordinator
from agentlocks.errors import ConcurrentRunError, ConfigError

from ._context import LEASE_KEY, thread_key
from ._put_plans import EMPTY, FORK, PutPlan, check_lease, mark, read_marks, take_mark, where

__all__ = ["DEFAULT_HEAD_TTL", "Heads", "uncancelled_save"]

logger = logging.getLogger("agentlocks")

T = TypeVar("T")

#: Seconds a head record lives after its last put. A record that expires costs nothing
#: but protection: the next put is accepted and tracking starts again.
DEFAULT_HEAD_TTL: Final = 7 * 24 * 3600.0

#: Seconds a conflicting head must have stood still before the saver is asked whether it
#: exists at all (see ``Heads.stale``).
STALE_AFTER: Final = 60.0


class Heads:
    """The state a guarded saver and its ``with_allowlist`` clones share."""

    def __init__(self, coord: Coordinator, ttl: float) -> None:
        backend = coord.backend
        if not isinstance(backend, HeadStore):
            raise ConfigError(
                f"{type(backend).__name__} keeps no head records (swap_head, drop_heads): "
                "guard_checkpointer needs a backend implementing agentlocks.backends.HeadStore"
            )
        if not ttl > 0:
            raise ConfigError(f"head_ttl must be > 0 seconds, got {ttl!r}")
        self.coord = coord
        self.store: HeadStore = backend
        self.ttl = float(ttl)
        self.stale_after = STALE_AFTER
        self.loop: asyncio.AbstractEventLoop | None = None  # for synchronous calls
        # An in-process store swaps without suspending (``swap_head_nowait``).
        self._swap_now: Callable[..., HeadSwap] | None = getattr(backend, "swap_head_nowait", None)
        #: The store swaps without suspending: a put on it needs no task (see ``aput``).
        self.swaps_inline = self._swap_now is not None
        # memory://'s own table, when the backend's swap is the table's (not overridden):
        # ``put_now`` swaps through it without building a HeadSwap on success.
        table = getattr(backend, "_heads", None)
        self._table: HeadTable | None = (
            table
            if isinstance(table, HeadTable)
            and getattr(type(backend), "swap_head_nowait", None) is MemoryBackend.swap_head_nowait
            else None
        )

    def note_loop(self) -> None:
        """Remember the event loop the saver is used on (for synchronous calls)."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()

    # -- reads -----------------------------------------------------------------------------

    def saw(self, config: Mapping[str, Any], found: object) -> None:
        """Record what a read of ``config`` found (see the module docstring)."""
        configurable = config.get("configurable") or {}
        thread_id = configurable.get("thread_id")
        if thread_id is None:
            return
        ns = str(configurable.get("checkpoint_ns") or "")
        checkpoint_id = configurable.get("checkpoint_id")
        if checkpoint_id:
            if found is not None:
                mark((str(thread_id), ns, str(checkpoint_id)), FORK)
        elif found is None:
            mark((str(thread_id), ns, ""), EMPTY)

    # -- puts ------------------------------------------------------------------------------

    def plan(self, config: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> PutPlan:
        """Check the put before any I/O and decide what the head must be."""
        thread_id, ns, parent = where(config)
        lease = check_lease(config, thread_id)
        child = str(checkpoint["id"])
        if parent is None:
            expected = "" if take_mark((thread_id, ns, "")) == EMPTY else None
        else:
            if child <= parent:
                raise ConcurrentRunError(
                    f"checkpoint {child} of thread {thread_id!r} sorts at or below its parent "
                    f"{parent}: the clocks of the hosts writing this thread disagree (the "
                    "checkpoint id is a timestamp). The saver would keep the parent as the "
                    "thread's latest checkpoint and this one would be invisible, so it was "
                    "refused; synchronise the hosts' clocks (NTP)",
                    key=thread_key(thread_id),
                )
            expected = None if take_mark((thread_id, ns, parent)) == FORK else parent
        return PutPlan(thread_id, ns, expected, child, lease)

    async def put(
        self,
        plan: PutPlan,
        write: Callable[[], Awaitable[T]],
        exists: Callable[[str], Awaitable[bool]],
        *,
        uncancelled: bool = False,
    ) -> T:
        """Swap the head, then write; a cancelled caller waits until both are settled.

        Hazard: the swap comes BEFORE the saver's write. Written first, a losing run's
        checkpoint would already be in the saver, and could become its "latest" (the
        newest id) before the swap refused it. So the order is swap, then write; and if
        the write fails, the head is put back (best effort) so that the thread is not
        wedged on a checkpoint that does not exist. Both steps run in a task of their own
        and a cancelled caller waits for it: a put cut short between the swap and the write
        would leave exactly that wedge. (A process killed there leaves it all the same: see
        :meth:`stale`.)

        ``uncancelled``: the caller is a task nothing cancels (:func:`uncancelled_save`),
        so the steps run in it directly, without the task (two turns of the event loop
        and a task per checkpoint put on a remote backend).
        """
        self.note_loop()
        if uncancelled:
            return await self._put(plan, write, exists)
        task = asyncio.ensure_future(self._put(plan, write, exists))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                with anyio.CancelScope(shield=True):
                    while not task.done():
                        # A native task.cancel() is not stopped by anyio's shield: a
                        # repeat is ignored here, the first is raised once the put settled.
                        with contextlib.suppress(asyncio.CancelledError):
                            await asyncio.wait((task,))
            if not task.cancelled():
                task.exception()  # retrieved: the caller's cancellation is what propagates
            raise

    async def _put(
        self,
        plan: PutPlan,
        write: Callable[[], Awaitable[T]],
        exists: Callable[[str], Awaitable[bool]],
    ) -> T:
        store, ttl = self.store, self.ttl
        swap = await store.swap_head(
            plan.resource, plan.field, plan.expected, plan.new, plan.token, ttl
        )
        if self.stale(swap) and not await exists(swap.head):
            self._warn_stale(plan, swap)
            swap = await store.swap_head(
                plan.resource, plan.field, swap.head, plan.new, plan.token, ttl
            )
        swap = plan.outcome(swap)
        try:
            return await write()
        except BaseException:
            await self._restore(plan, swap)
            raise

    def stale(self, swap: HeadSwap) -> bool:
        """Could this conflict be with a head that was never written?

        A put swaps the head and then writes the saver. A process that dies between the two
        (killed, or its backend connection lost after the swap was applied) leaves a head
        that no saver holds, and every later put on the thread would conflict with it. So a
        conflicting head that has not moved for ``stale_after`` seconds (far longer than
        one saver write takes) is looked up in the saver, once: if it is not there, the put
        replaces it (compare-and-swap from that head) instead of failing. A head written
        by another run is always in the saver: that conflict stands.
        """
        return (
            swap.outcome == "conflict"
            and bool(swap.head)
            and swap.age is not None
            and swap.age >= self.stale_after
        )

    def _warn_stale(self, plan: PutPlan, swap: HeadSwap) -> None:
        logger.warning(
            "thread %r: head checkpoint %s (unchanged for %.0f s) is not in the saver: a put "
            "failed half-way; replacing it",
            plan.thread_id,
            swap.head,
            swap.age or 0.0,
        )

    async def _restore(self, plan: PutPlan, swap: HeadSwap) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self.store.swap_head(
                    plan.resource, plan.field, plan.new, swap.head, plan.token, self.ttl
                )
        except Exception as exc:  # best effort: the record expires by itself
            logger.warning(
                "could not put back the head of thread %r after a failed put: %s",
                plan.thread_id,
                exc,
            )

    def put_now(
        self,
        config: Mapping[str, Any],
        checkpoint: Mapping[str, Any],
        write: Callable[[], T],
        exists: Callable[[str], bool],
    ) -> T:
        """``plan`` then ``put_sync``, for a store and a saver that never suspend.

        The hot path of every ``InMemorySaver`` put on ``memory://``: the same checks in
        the same order, with no ``PutPlan`` or ``HeadSwap`` built unless the swap is
        refused (or the write fails and the head must be put back).
        """
        table = self._table
        if table is None:
            return self.put_sync(self.plan(config, checkpoint), write, exists)
        configurable = config.get("configurable") or {}
        thread_id = configurable.get("thread_id")
        checkpoint_id = configurable.get("checkpoint_id")
        lease = configurable.get(LEASE_KEY)
        if (
            thread_id is None
            or not checkpoint_id
            or not isinstance(lease, Lease)
            or lease.lost
            or lease.key != thread_key(thread_id)
            or str(checkpoint["id"]) <= checkpoint_id
            or read_marks.get()
        ):
            # Anything but a fenced child of a parent with no mark on it: the general path
            # (it raises the errors, and consumes marks, as the plan says).
            return self.put_sync(self.plan(config, checkpoint), write, exists)
        # Exactly plan()'s outcome for this case: expected = parent, this lease's token.
        thread_id = str(thread_id)
        field = str(configurable.get("checkpoint_ns") or "")
        child = str(checkpoint["id"])
        resource = "l:" + thread_key(thread_id)
        token = lease.token
        done = table.try_swap(resource, field, checkpoint_id, child, token, self.ttl)
        if isinstance(done, HeadSwap):  # refused (or maybe a stale head): the general path
            plan = PutPlan(thread_id, field, checkpoint_id, child, lease)
            if self.stale(done) and not exists(done.head):
                self._warn_stale(plan, done)
                done = self._swap_sync(resource, field, done.head, child, token)
            swap = plan.outcome(done)
            return self._write_sync(plan, swap.head, write)
        try:
            return write()
        except BaseException:
            plan = PutPlan(thread_id, field, checkpoint_id, child, lease)
            self._restore_sync(plan, done[0])
            raise

    def _write_sync(self, plan: PutPlan, previous: str, write: Callable[[], T]) -> T:
        try:
            return write()
        except BaseException:
            self._restore_sync(plan, previous)
            raise

    def _restore_sync(self, plan: PutPlan, previous: str) -> None:
        try:
            self._swap_sync(plan.resource, plan.field, plan.new, previous, plan.token)
        except Exception as exc:
            logger.warning("could not put back the head of thread %r: %s", plan.thread_id, exc)

    def put_sync(self, plan: PutPlan, write: Callable[[], T], exists: Callable[[str], bool]) -> T:
        """``put`` for a synchronous saver call (same order and hazards)."""
        swap = self._swap_sync(plan.resource, plan.field, plan.expected, plan.new, plan.token)
        if self.stale(swap) and not exists(swap.head):
            self._warn_stale(plan, swap)
            swap = self._swap_sync(plan.resource, plan.field, swap.head, plan.new, plan.token)
        swap = plan.outcome(swap)
        return self._write_sync(plan, swap.head, write)

    def _swap_sync(
        self, resource: str, field: str, expected: str | None, new: str, token: int | None
    ) -> HeadSwap:
        now = self._swap_now
        if now is not None:  # in-process: the hot path of every InMemorySaver put
            return now(resource, field, expected, new, token, self.ttl)
        swap = self.call_sync("swap_head", resource, field, expected, new, token, self.ttl)
        return cast("HeadSwap", swap)

    # -- deletes ---------------------------------------------------------------------------

    async def drop(self, thread_ids: set[str]) -> None:
        """Forget the heads of these threads (their checkpoints were deleted or replaced)."""
        for thread_id in thread_ids:
            await self.store.drop_heads("l:" + thread_key(thread_id))

    def drop_sync(self, thread_ids: set[str]) -> None:
        """``drop`` for a synchronous saver call."""
        for thread_id in thread_ids:
            self.call_sync("drop_heads", "l:" + thread_key(thread_id))

    # -- synchronous calls -----------------------------------------------------------------

    def call_sync(self, method: str, *args: Any) -> Any:
        """Call a ``HeadStore`` method from synchronous code.

        An in-process backend offers ``<method>_nowait``. A remote backend's connections
        belong to the event loop the guarded saver was first used on, so a call from
        another thread runs there; from the loop's own thread it cannot (it would block the
        loop it waits for), and is refused with an error that says what to do instead.
        """
        nowait = getattr(self.store, method + "_nowait", None)
        if nowait is not None:
            return nowait(*args)
        loop = self.loop
        if loop is not None and loop.is_running() and not _on_loop_thread(loop):
            coro = getattr(self.store, method)(*args)
            return asyncio.run_coroutine_threadsafe(coro, loop).result()
        raise RuntimeError(
            f"guard_checkpointer on {self.coord!r}: synchronous checkpoint writes need an "
            "in-process coordinator (memory://) or a call from a thread other than the "
            "event loop's, after the saver was first used there; use the async API "
            "(ainvoke, astream, aupdate_state)"
        )


# The coroutine LangGraph saves each checkpoint of a run in, a task per checkpoint
# (``pregel/_loop.py``), and the configurable key of the run's durability.
_LANGGRAPH_SAVE: Final = "AsyncPregelLoop._checkpointer_put_after_previous"
_DURABILITY: Final = "__pregel_durability"


def uncancelled_save(config: Mapping[str, Any]) -> bool:
    """Is this put LangGraph's own background save of a run's checkpoint, with
    ``durability`` ``"async"`` or ``"exit"``? Nothing cancels that task but the loop's end.

    Invariant (LangGraph 1.x, read in its source): the loop submits each save to its
    executor without ``__cancel_on_exit__``, and the executor's exit waits for it
    (``asyncio.wait``, which cancels nothing); a cancelled run does not reach it. Only
    with ``durability="sync"`` does the run await the save itself (``pregel/main.py``:
    ``await loop._put_checkpoint_fut``), so a cancelled run cancels the save, and through
    ``await prev`` the saves before it: False then. The event loop's shutdown cancels
    every task, a task of ours too. Any other caller (``aupdate_state`` puts in the
    caller's task, a direct ``aput``, a renamed coroutine in a later LangGraph) gives
    False, and the put takes its own task as before.
    """
    task = asyncio.current_task()
    if task is None:
        return False
    code = getattr(task.get_coro(), "cr_code", None)
    if code is None or code.co_qualname != _LANGGRAPH_SAVE:
        return False
    durability = (config.get("configurable") or {}).get(_DURABILITY)
    return durability in ("async", "exit")


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:  # no loop runs in this thread
        return False
