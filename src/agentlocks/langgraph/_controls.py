"""The ``RunControl`` side of a guarded run: whose control a run gets, who may drain it.

* :func:`run_control`: the caller's ``control=``, else a fresh one per root run (linked to
  the caller's shared one inside ``abatch``).
* :class:`Relay`: what the ``"interrupt"`` strategy's drain signals are handed, so that a
  drain *we* caused (and only that) closes dangling tool calls afterwards.
* :class:`DrainSignals`: the interface of ``agentlocks.langgraph._drain``, imported on
  first use (:func:`drain_module`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

from langgraph.runtime import RunControl

from agentlocks._lease import Lease

__all__ = [
    "INTERRUPT_REASON",
    "PARENT_CONTROL_KEY",
    "DrainSignals",
    "LinkedControl",
    "Relay",
    "drain_module",
    "run_control",
]

INTERRUPT_REASON: Final = "agentlocks: interrupted by a newer run on this thread"
PARENT_CONTROL_KEY: Final = "__agentlocks_batch_control__"
"""``configurable`` entry carrying a caller's ``control=`` from ``abatch`` to each item."""


class DrainSignals(Protocol):
    """The ``"interrupt"`` strategy's cross-process signals (``_drain.DrainSignals``).

    ``watch`` is entered by the running run right after it holds the thread's lock and
    exited when the run ends; meanwhile a drain request for the thread (from any process)
    calls ``control.request_drain()`` and a cancel request calls ``cancel()``. It may be
    entered in one task and exited in another (a v3 stream pumps each step in its own).
    """

    def watch(
        self,
        thread_id: str,
        control: RunControl,
        cancel: Callable[[], None],
        *,
        lease: Lease | None = None,
    ) -> AbstractAsyncContextManager[None]: ...

    async def request_drain(self, thread_id: str) -> None: ...

    async def request_cancel(self, thread_id: str) -> None: ...

    async def aclose(self) -> None: ...


def drain_module() -> Any:
    """``agentlocks.langgraph._drain``, imported on first use of ``on_busy="interrupt"``."""
    return importlib.import_module("agentlocks.langgraph._drain")


class LinkedControl(RunControl):
    """One ``abatch`` item's own ``RunControl`` that also obeys the caller's shared one.

    Draining one item (the ``"interrupt"`` strategy asks it for its thread) must not drain
    the other items; a drain the caller requests on the control it passed drains them all.
    """

    __slots__ = ("_parent",)

    def __init__(self, parent: RunControl) -> None:
        super().__init__()
        self._parent = parent

    @property
    def drain_requested(self) -> bool:
        return self._drain_reason is not None or self._parent.drain_requested

    @property
    def drain_reason(self) -> str | None:
        return self._drain_reason or self._parent.drain_reason


class Relay(RunControl):
    """What the drain signals are given: records that *we* asked the run to stop.

    A drain the user requests (a SIGTERM handler, say) leaves the run resumable; only a
    drain caused by a newer run on the thread closes dangling tool calls afterwards.
    """

    __slots__ = ("fired", "target")

    def __init__(self, target: RunControl) -> None:
        super().__init__()
        self.target = target
        self.fired = False

    def request_drain(self, reason: str = INTERRUPT_REASON) -> None:
        self.fired = True
        self._drain_reason = reason
        self.target.request_drain(INTERRUPT_REASON)


def run_control(
    control: RunControl | None, configurable: Mapping[str, Any]
) -> Callable[[], RunControl]:
    """The root run's ``RunControl``: the caller's, else a fresh one (linked in a batch)."""
    if control is not None:
        return lambda: control
    parent = configurable.get(PARENT_CONTROL_KEY)
    if isinstance(parent, RunControl):
        return lambda: LinkedControl(parent)
    return RunControl
