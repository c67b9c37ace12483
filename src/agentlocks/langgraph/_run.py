"""The policy of a guarded run: which lock, how to wait for it, and how to let it go.

One :class:`Guard` is shared by a guarded graph and every copy of it (``with_config``,
``copy``): the coordinator, the ``on_busy`` strategy and its options, the drain signals of
the ``"interrupt"`` strategy, and the warn-once flag for lent checkpointers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from agentlocks._lease import Lease
from agentlocks.coordinator import Coordinator
from agentlocks.errors import Busy, ConfigError, LeaseLost, ThreadBusy

from ._context import LEASE_KEY, lease_for, thread_key
from ._controls import PARENT_CONTROL_KEY, DrainSignals, drain_module

__all__ = [
    "TASK_ID",
    "Guard",
    "Held",
    "OnBusy",
    "is_nested",
    "release_after",
    "thread_key",
    "with_lease",
]

OnBusy = Literal["enqueue", "reject", "interrupt"]

RUNS_SEMAPHORE: Final = "langgraph-runs"

TASK_ID: Final = "__pregel_task_id"
_CHECKPOINTER: Final = "__pregel_checkpointer"


def is_nested(configurable: Mapping[str, Any], thread_id: object) -> bool:
    """Whether a call must pass through: it runs inside a run that already holds the lock.

    True when LangGraph runs the graph as a task of another graph (a subgraph: its config
    carries ``__pregel_task_id``), or the config or the calling context carries the lease of
    this very thread (re-entry from a node; locking again would deadlock on ourselves).
    """
    if TASK_ID in configurable:
        return True
    # The exact key, not lease_for's suffix match: thread "x:1" must not pass for "1".
    lease = lease_for({"configurable": configurable}, thread_id)
    return lease is not None and lease.key == thread_key(thread_id)


@dataclass(slots=True)
class Held:
    """What one guarded run holds: the thread's lease and, with a cap, a run slot."""

    lease: Lease
    slot: Lease | None = None

    async def release(self) -> None:
        """Release the slot, then the thread (both idempotent; shielded by the core)."""
        try:
            if self.slot is not None:
                await self.slot.release()
        finally:
            await self.lease.release()


def release_after(held: Held, *, first: Callable[[], Awaitable[None]] | None = None) -> None:
    """Release ``held`` in the background (after ``first``, if given); never await.

    Used on cancellation: awaiting in a cancelled ``finally`` is re-cancelled by anyio and
    Starlette cancel scopes. The release is a task of the coordinator's supervisor, so a
    failure (a lost lease: guarantee 6) is logged on the ``agentlocks`` logger with the key
    and token, and ``coord.aclose()`` ends it (then the lease it ended is not reported).
    """

    coord = held.lease._coordinator

    async def end() -> None:
        try:
            if first is not None:
                await first()
        finally:
            try:
                await held.release()
            except LeaseLost:
                if not coord.closed:
                    raise  # the supervisor logs it, with key and token
                # aclose() ended the lease itself (a loss before that was logged when it
                # happened): a release in the background has nobody else to tell.

    # A closed coordinator refuses the task: it has ended every grant already.
    with contextlib.suppress(RuntimeError):
        coord._tasks.spawn(
            end(),
            name="LangGraph thread release after cancellation",
            key=held.lease.key,
            token=held.lease.token,
        )


@dataclass(slots=True, eq=False)
class Guard:
    """The shared policy of one guarded graph and its copies."""

    coord: Coordinator
    on_busy: OnBusy
    timeout: float | None
    max_waiting: int | None
    max_concurrent_runs: int | None
    drain_timeout: float
    warned_lent_checkpointer: bool = False
    _signals: DrainSignals | None = None
    slots: dict[Lease, Lease] = field(default_factory=dict)  # acquire_thread's run slots

    def __post_init__(self) -> None:
        if self.on_busy not in ("enqueue", "reject", "interrupt"):
            raise ConfigError(
                f"on_busy must be 'enqueue', 'reject' or 'interrupt', got {self.on_busy!r}"
            )
        if self.timeout is not None and self.timeout < 0:
            raise ConfigError(f"timeout must be >= 0 or None, got {self.timeout!r}")
        if self.drain_timeout < 0:
            raise ConfigError(f"drain_timeout must be >= 0, got {self.drain_timeout!r}")
        cap = self.max_concurrent_runs
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ConfigError(f"max_concurrent_runs must be an int >= 1 or None, got {cap!r}")
        # Validate the lock options now (no I/O): a bad max_waiting fails at guard time.
        self.coord.acquire("langgraph:check", timeout=self.timeout, max_waiting=self.max_waiting)

    @property
    def signals(self) -> DrainSignals | None:
        """The drain signals of the ``"interrupt"`` strategy, made on first use."""
        if self.on_busy != "interrupt":
            return None
        if self._signals is None:
            self._signals = drain_module().DrainSignals(self.coord)
        return self._signals

    async def aclose(self) -> None:
        """Stop the drain signals' listener, if any."""
        signals, self._signals = self._signals, None
        if signals is not None:
            await signals.aclose()

    def warn_lent_checkpointer(self, configurable: Mapping[str, Any]) -> None:
        """Warn once when a config lends a checkpointer that is not a guarded one."""
        saver = configurable.get(_CHECKPOINTER)
        if saver is None or self.warned_lent_checkpointer:
            return
        if type(saver).__module__.startswith("agentlocks."):
            return
        self.warned_lent_checkpointer = True
        warnings.warn(
            f"config['configurable']['{_CHECKPOINTER}'] lends a {type(saver).__name__} that "
            "bypasses the graph's own checkpointer: the thread lock still holds, but writes "
            "are not fenced; wrap it with agentlocks.langgraph.guard_checkpointer",
            RuntimeWarning,
            stacklevel=4,
        )

    # -- taking the thread --------------------------------------------------------------

    async def take(self, thread_id: object, *, for_update: bool = False) -> Held:
        """Take the thread's lock as ``on_busy`` says, then a run slot if capped.

        ``for_update`` (state updates): ``"reject"`` still rejects, but ``"interrupt"``
        waits like ``"enqueue"``: a state update never stops a running run.

        Raises:
            ThreadBusy: ``on_busy="reject"`` and the thread is running.
            AcquireTimeout, QueueFull: ``timeout`` / ``max_waiting`` (HTTP 503).
        """
        started = time.monotonic()
        key = thread_key(thread_id)
        if self.on_busy == "reject":
            try:
                lease = await self.coord.acquire(key, wait=False)
            except Busy as exc:
                raise ThreadBusy(
                    f"thread {thread_id!r} is already running a run (on_busy='reject')",
                    key=key,
                ) from exc
        elif self.on_busy == "interrupt" and not for_update:
            lease = await self._take_interrupting(thread_id, key)
        elif self.timeout is None and self.max_waiting is None:
            lease = await self.coord.acquire(key)  # no options: the core's hot path
        else:
            lease = await self.coord.acquire(
                key, timeout=self.timeout, max_waiting=self.max_waiting
            )
        held = Held(lease)
        if self.max_concurrent_runs is None:
            return held
        try:
            if self.slots:
                await self.return_orphaned_slots()
            held.slot = await self.coord.semaphore(
                RUNS_SEMAPHORE, self.max_concurrent_runs, timeout=self._left(started)
            )
        except BaseException:
            # Invariant: a caller that gets no Held holds nothing (cancellation included).
            await held.release()
            raise
        return held

    async def return_orphaned_slots(self) -> None:
        """Give back the run slots of ``acquire_thread`` leases that ended without them.

        A lease released with ``lease.release()`` instead of ``release_thread`` (or lost)
        would otherwise keep its run slot, renewed, for the life of the process: one run
        fewer for everyone. Done before every slot is taken, so no request waits for one.
        """
        for lease in [lease for lease in self.slots if lease.released or lease.lost]:
            slot = self.slots.pop(lease, None)  # None: a concurrent take gave it back
            if slot is not None:
                with contextlib.suppress(LeaseLost):  # lost too: nothing left to give back
                    await slot.release()

    def _left(self, started: float) -> float | None:
        if self.timeout is None:
            return None
        return max(0.0, self.timeout - (time.monotonic() - started))

    async def _take_interrupting(self, thread_id: object, key: str) -> Lease:
        """Ask the running run (any process) to drain; cancel it after ``drain_timeout``."""
        try:
            return await self.coord.acquire(key, wait=False)
        except Busy:
            pass
        signals = self.signals
        assert signals is not None  # on_busy == "interrupt"
        await signals.request_drain(str(thread_id))
        # One request keeps its place in the FIFO queue across the drain timeout: a second
        # acquire after it would queue behind whoever arrived meanwhile.
        waiter = asyncio.ensure_future(
            _wait(self.coord.acquire(key, timeout=self.timeout, max_waiting=self.max_waiting))
        )
        try:
            done, _ = await asyncio.wait({waiter}, timeout=self.drain_timeout)
            if not done:
                await signals.request_cancel(str(thread_id))
            return await waiter
        except BaseException:
            _abandon(waiter)
            raise


async def _wait(request: Awaitable[Lease]) -> Lease:
    return await request


def _abandon(waiter: asyncio.Future[Lease]) -> None:
    """Cancel a lock request we stopped waiting for; release it if it was granted anyway."""

    def release_if_granted(fut: asyncio.Future[Lease]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            release_after(Held(fut.result()))

    waiter.cancel()
    waiter.add_done_callback(release_if_granted)


def with_lease(config: Mapping[str, Any] | None, lease: Lease) -> dict[str, Any]:
    """``config`` with the lease marker in its ``configurable`` (a new dict; input untouched)."""
    base = dict(config or {})
    configurable = dict(base.get("configurable") or {})
    configurable[LEASE_KEY] = lease
    configurable.pop(PARENT_CONTROL_KEY, None)
    base["configurable"] = configurable
    return base
