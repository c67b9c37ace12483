"""The thread-wide calls of ``guard_checkpointer``: delete, copy and prune threads or runs.

Each checks the lease of the threads it touches (a run holding one of them is the only
caller allowed while it runs), calls the wrapped saver, then forgets the head records it
made wrong: a thread whose checkpoints are deleted, or a copy's target, starts tracking its
head again at its next put instead of being refused until the record expires.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._put_plans import check_lease

if TYPE_CHECKING:
    from ._checkpointer import _Guarded

__all__ = [
    "acopy_thread",
    "adelete_for_runs",
    "adelete_thread",
    "aprune",
    "copy_thread",
    "delete_for_runs",
    "delete_thread",
    "prune",
]

logger = logging.getLogger("agentlocks")


def delete_thread(self: _Guarded, thread_id: str, *args: Any, **kwargs: Any) -> None:
    check_lease(None, thread_id)
    self._inner.delete_thread(thread_id, *args, **kwargs)
    self._heads.drop_sync({str(thread_id)})


async def adelete_thread(self: _Guarded, thread_id: str, *args: Any, **kwargs: Any) -> None:
    check_lease(None, thread_id)
    await self._inner.adelete_thread(thread_id, *args, **kwargs)
    await self._heads.drop({str(thread_id)})


def _threads_of_runs_sync(self: _Guarded, run_ids: Sequence[str]) -> set[str] | None:
    try:
        return {
            str(item.config["configurable"]["thread_id"])
            for run_id in run_ids
            for item in self._inner.list(None, filter={"run_id": run_id})
        }
    except Exception as exc:  # the delete itself must not fail for it
        _unknown_threads(exc)
        return None


async def _threads_of_runs(self: _Guarded, run_ids: Sequence[str]) -> set[str] | None:
    threads: set[str] = set()
    try:
        for run_id in run_ids:
            async for item in self._inner.alist(None, filter={"run_id": run_id}):
                threads.add(str(item.config["configurable"]["thread_id"]))
    except Exception as exc:  # the delete itself must not fail for it
        _unknown_threads(exc)
        return None
    return threads


def _unknown_threads(exc: Exception) -> None:
    logger.warning(
        "guard_checkpointer could not list the threads of the deleted runs (%s): a thread "
        "whose head checkpoint is deleted refuses puts until its head record expires",
        exc,
    )


# Deleting a run's checkpoints can delete a thread's head: the threads concerned forget
# their head records (found before the delete, from the checkpoints' run_id metadata), so
# the thread's next put starts tracking again instead of being refused forever.
def delete_for_runs(self: _Guarded, run_ids: Sequence[str], *args: Any, **kwargs: Any) -> None:
    check_lease(None)
    threads = _threads_of_runs_sync(self, run_ids)
    self._inner.delete_for_runs(run_ids, *args, **kwargs)
    self._heads.drop_sync(threads or set())


async def adelete_for_runs(
    self: _Guarded, run_ids: Sequence[str], *args: Any, **kwargs: Any
) -> None:
    check_lease(None)
    threads = await _threads_of_runs(self, run_ids)
    await self._inner.adelete_for_runs(run_ids, *args, **kwargs)
    await self._heads.drop(threads or set())


def copy_thread(self: _Guarded, source: str, target: str, *args: Any, **kwargs: Any) -> None:
    check_lease(None, source)
    check_lease(None, target)
    self._inner.copy_thread(source, target, *args, **kwargs)
    self._heads.drop_sync({str(target)})


async def acopy_thread(self: _Guarded, source: str, target: str, *args: Any, **kwargs: Any) -> None:
    check_lease(None, source)
    check_lease(None, target)
    await self._inner.acopy_thread(source, target, *args, **kwargs)
    await self._heads.drop({str(target)})


def _pruned(thread_ids: Sequence[str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> set[str]:
    # "keep_latest" keeps every namespace's latest checkpoint, which is its head: the
    # records stay. "delete" (or anything else) removes them: the records go too.
    strategy = kwargs.get("strategy", args[0] if args else "keep_latest")
    return set() if strategy == "keep_latest" else {str(t) for t in thread_ids}


def prune(self: _Guarded, thread_ids: Sequence[str], *args: Any, **kwargs: Any) -> None:
    for thread_id in thread_ids:
        check_lease(None, thread_id)
    self._inner.prune(thread_ids, *args, **kwargs)
    self._heads.drop_sync(_pruned(thread_ids, args, kwargs))


async def aprune(self: _Guarded, thread_ids: Sequence[str], *args: Any, **kwargs: Any) -> None:
    for thread_id in thread_ids:
        check_lease(None, thread_id)
    await self._inner.aprune(thread_ids, *args, **kwargs)
    await self._heads.drop(_pruned(thread_ids, args, kwargs))
