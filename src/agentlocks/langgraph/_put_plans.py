"""What one checkpoint put must find: the read marks of its context, and its plan.

A put's precondition depends on how its run read the thread (``_heads.py``'s docstring):
a read by explicit ``checkpoint_id`` marks the parent a fork, a read that found nothing
marks the thread empty. The marks live in a context variable holding a mutable dict:
LangGraph runs the puts of a run in copies of the context of its read (``copy_context()``
in ``pregel/_executor.py``), and copies share the dict, so the first put that uses a mark
consumes it for every copy. A :class:`PutPlan` is the compare-and-swap decided from them,
and says which error a refused swap means.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Final

from agentlocks._lease import Lease
from agentlocks.backends._capabilities import HeadSwap
from agentlocks.errors import ConcurrentRunError, LeaseLost

from ._context import lease_for, thread_key

__all__ = [
    "EMPTY",
    "FORK",
    "PutPlan",
    "check_lease",
    "mark",
    "read_marks",
    "take_mark",
    "where",
]

#: Marks kept per context at most (explicit reads that were never followed by a put).
MAX_MARKS: Final = 256

FORK: Final = "fork"  # the put's parent was read by checkpoint_id: no precondition
EMPTY: Final = "empty"  # the read found no checkpoint: a parentless put expects absent

# (thread, ns, checkpoint id or "") -> mark; see the module docstring.
read_marks: ContextVar[dict[tuple[str, str, str], str] | None] = ContextVar(
    "agentlocks_checkpoint_reads", default=None
)


def mark(key: tuple[str, str, str], kind: str) -> None:
    marks = read_marks.get()
    if marks is None:
        marks = {}
        read_marks.set(marks)
    marks.pop(key, None)
    marks[key] = kind
    if len(marks) > MAX_MARKS:
        del marks[next(iter(marks))]


def take_mark(key: tuple[str, str, str]) -> str | None:
    marks = read_marks.get()
    return None if marks is None else marks.pop(key, None)


def where(config: Mapping[str, Any]) -> tuple[str, str, str | None]:
    configurable = config.get("configurable") or {}
    thread_id = configurable.get("thread_id")
    if thread_id is None:
        raise ValueError("a checkpoint config needs configurable.thread_id")
    ns = configurable.get("checkpoint_ns") or ""
    return str(thread_id), str(ns), configurable.get("checkpoint_id") or None


def check_lease(config: Mapping[str, Any] | None, thread_id: object = None) -> Lease | None:
    """Return the run's lease for this thread, refusing the write if it was lost."""
    lease = lease_for(config, thread_id)
    if lease is not None and lease.lost:
        raise LeaseLost(
            f"the lease on {lease.key!r} was lost: this run may no longer write its thread",
            key=lease.key,
        )
    return lease


class PutPlan:
    """One put's compare-and-swap: where, what it expects, the child, and the fence."""

    __slots__ = ("expected", "field", "lease", "new", "resource", "thread_id")

    def __init__(
        self, thread_id: str, field: str, expected: str | None, new: str, lease: Lease | None
    ) -> None:
        self.thread_id = thread_id
        self.resource = "l:" + thread_key(thread_id)
        self.field = field
        self.expected = expected
        self.new = new
        self.lease = lease

    @property
    def token(self) -> int | None:
        return None if self.lease is None else self.lease.token

    def outcome(self, swap: HeadSwap) -> HeadSwap:
        """Raise the error a refused swap means; return a successful one."""
        if swap.outcome == "swapped":
            return swap
        where = f"thread {self.thread_id!r}" + (f" (namespace {self.field!r})" * bool(self.field))
        if swap.outcome == "fenced":
            key = thread_key(self.thread_id)
            raise LeaseLost(
                f"checkpoint {self.new} of {where} was refused: a run holding a newer lease "
                f"(token {swap.token} > {self.token}) has written the thread",
                key=key,
            )
        head = swap.head or "none"
        raise ConcurrentRunError(
            f"checkpoint {self.new} of {where} was refused: its parent "
            f"{self.expected or 'none'} is no longer the thread's head ({head}); another "
            "run wrote the thread since this run read it",
            key=thread_key(self.thread_id),
        )
