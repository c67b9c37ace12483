"""Background work of one coordinator, and cleanup that must outlive a cancellation.

One cancellation model, asyncio's: agentlocks is asyncio-only (its drivers are), and a
native ``task.cancel()`` is what task groups, ``asyncio.timeout`` and servers use. anyio's
``CancelScope(shield=True)`` does not stop a native ``task.cancel()``, so shielding here is
done the only way that holds against repeated cancels: run the step in a task of its own
and wait for it, absorbing every cancellation until it is done (:func:`finish`).

Every background loop (lease renewal, inbox readers, keep-alives, liveness checks, flushers,
reapers, releases sent in the background) is owned by the coordinator's
:class:`TaskSupervisor`: started on first use, failures logged on the ``agentlocks`` logger
with the key and token they concern, all of them cancelled and awaited once by ``aclose()``.
It is not an anyio task group on purpose: a coordinator is shared by every task of the
application, so no single task's scope can own its background work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["TaskSupervisor", "finish", "logger", "settle"]

T = TypeVar("T")

logger = logging.getLogger("agentlocks")


async def finish(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end even if the caller is cancelled, once or many times, meanwhile.

    The step runs in a task of its own. Cancellations of the caller that arrive while it
    runs are absorbed; once the step is done, one ``CancelledError`` is raised (after the
    step, never instead of it), so the caller's cancellation is not lost. The step's own
    failure is raised if the caller was not cancelled; if it was, the failure is logged.

    Used for every release, withdrawal and undo: an interrupted one would leave a key held
    by nobody, or a request queued for nobody, until its lease ran out (guarantee 7).
    """
    task = asyncio.get_running_loop().create_task(coro)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError as exc:
            # Keep the first one: its message is how anyio's cancel scopes (the
            # coordinator's timeouts) recognise their own cancellation; a bare new
            # CancelledError would escape them as a foreign one.
            cancelled = cancelled or exc
    if cancelled is not None:
        if not task.cancelled() and task.exception() is not None:
            logger.warning(
                "cleanup failed while its caller was being cancelled: %r", task.exception()
            )
        # The caller's own CancelledError, not a new one: its message tells an anyio cancel
        # scope (``move_on_after``: the coordinator's timeout) that the cancellation is its
        # own to absorb; a bare CancelledError would escape the scope as a plain cancel.
        raise cancelled
    return task.result()


async def settle(task: asyncio.Future[Any]) -> None:
    """Wait until ``task`` is done, absorbing the caller's cancellations until then.

    As :func:`finish` (the caller's cancellation is raised afterwards), for a task that is
    already running; its own outcome is left to whoever owns it.
    """
    await finish(_wait_all([task]))


class TaskSupervisor:
    """Owns the background tasks of one coordinator (and of its backend).

    ``spawn`` starts a task and keeps it until it ends; a task that fails is logged with
    the key and token it was about. ``aclose`` cancels every task still running and waits
    for them all; spawning afterwards is refused, so nothing outlives the coordinator.
    """

    __slots__ = ("_closed", "_labels", "_tasks")

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._labels: dict[asyncio.Task[Any], str] = {}
        self._closed = False

    def __len__(self) -> int:
        """Number of background tasks still running."""
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"TaskSupervisor(tasks={len(self._tasks)}, closed={self._closed})"

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has begun: no task may be started any more."""
        return self._closed

    def spawn(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        name: str,
        key: str | None = None,
        token: int | None = None,
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a supervised background task named ``name``.

        ``key`` and ``token`` say what the task is about, for the log line if it fails.

        Raises:
            RuntimeError: The supervisor is closed (the coordinator was closed).
        """
        if self._closed:
            coro.close()
            raise RuntimeError(f"cannot start {name!r}: the coordinator is closed")
        task = asyncio.get_running_loop().create_task(coro, name=f"agentlocks: {name}")
        self._tasks.add(task)
        label = name
        if key is not None:
            label += f" key={key!r}"
        if token is not None:
            label += f" token={token}"
        self._labels[task] = label
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        label = self._labels.pop(task, task.get_name())
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so asyncio never reports it as lost
        if exc is not None:
            logger.error(
                "background task failed: %s: %r",
                label,
                exc,
                exc_info=exc,
                extra={"agentlocks_task": label},
            )

    async def aclose(self) -> None:
        """Cancel every running task and wait until all have ended. Idempotent."""
        self._closed = True
        current = asyncio.current_task()
        while True:
            tasks = [t for t in self._tasks if t is not current and not t.done()]
            if not tasks:
                return
            for task in tasks:
                task.cancel()
            # Shielded against our own caller's cancellation: tasks must not outlive us.
            await finish(_wait_all(tasks))


async def _wait_all(tasks: list[asyncio.Task[Any]] | list[asyncio.Future[Any]]) -> None:
    await asyncio.wait(tasks)
