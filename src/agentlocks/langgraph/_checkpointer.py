"""``guard_checkpointer(saver, coord)``: a saver that refuses silent lost updates.

The wrapper is a ``BaseCheckpointSaver`` (LangGraph accepts nothing else) built per wrapped
type: it overrides a method only when the wrapped saver's class does, because LangGraph's
conformance suite and the Agent Server detect a capability by class override
(``langgraph/checkpoint/conformance/capabilities.py``). Every method delegates; ``put`` and
``aput`` first compare-and-swap the thread's head record (``_heads.py``). Extra positional
and keyword arguments pass through (``AsyncRedisSaver.aput`` takes ``stream_mode``), and
attributes the wrapper lacks (``setup``, ``asetup``, ``conn``) come from the wrapped saver.
The thread-wide calls (delete, copy, prune) are in ``_thread_ops.py``.

No lock of our own is taken around the saver's I/O, and the wrapper never reads the saver to
find a head (``InMemorySaver`` grows an entry on every read miss): the head lives in the
coordinator's backend.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from typing import Any, Final

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from agentlocks._lease import Lease
from agentlocks.coordinator import Coordinator

from ._context import LEASE_KEY
from ._heads import DEFAULT_HEAD_TTL, Heads, uncancelled_save
from ._put_plans import check_lease
from ._thread_ops import (
    acopy_thread,
    adelete_for_runs,
    adelete_thread,
    aprune,
    copy_thread,
    delete_for_runs,
    delete_thread,
    prune,
)

__all__ = ["guard_checkpointer"]

Config = Any  # RunnableConfig: a TypedDict; the wrapper only passes it on


def guard_checkpointer(
    saver: BaseCheckpointSaver[Any], coord: Coordinator, *, head_ttl: float = DEFAULT_HEAD_TTL
) -> BaseCheckpointSaver[Any]:
    """Wrap ``saver`` so that a run overwriting another run's checkpoints raises instead.

    A ``put`` whose parent is no longer the head of its thread and ``checkpoint_ns``
    raises :class:`~agentlocks.ConcurrentRunError`, across every process sharing the
    coordinator's server; time travel, ``update_state`` on an old checkpoint and parentless
    writes are forks and pass. When the current run holds the thread's lease (taken by
    ``guard_graph``), writes carry its fencing token and a run whose lease was lost is
    refused with :class:`~agentlocks.LeaseLost` before the saver is written.

    Args:
        saver: Any LangGraph checkpoint saver (``InMemorySaver``, ``AsyncPostgresSaver``, ...).
        coord: The coordinator whose backend keeps the per-thread head records.
        head_ttl: Seconds a thread's head record lives after its last write (default 7
            days); a thread idle for longer simply starts being tracked again.

    Returns:
        A ``BaseCheckpointSaver`` of a class made for ``type(saver)``.

    Example:
        >>> import agentlocks
        >>> from langgraph.checkpoint.memory import InMemorySaver
        >>> saver = guard_checkpointer(InMemorySaver(), agentlocks.connect())
        >>> type(saver).__name__
        'GuardedInMemorySaver'
    """
    if not isinstance(saver, BaseCheckpointSaver):
        raise TypeError(f"guard_checkpointer needs a BaseCheckpointSaver, got {type(saver)!r}")
    return wrapper_class(type(saver))(saver, Heads(coord, head_ttl))


class _Guarded(BaseCheckpointSaver[Any]):
    """What every wrapper class has, whatever it wraps."""

    _inner: BaseCheckpointSaver[Any]
    _heads: Heads
    _inline: bool
    wrapped: type[BaseCheckpointSaver[Any]]

    def __init__(self, inner: BaseCheckpointSaver[Any], heads: Heads) -> None:
        # BaseCheckpointSaver.__init__ is not called: all it does is set ``serde``, which
        # here is the wrapped saver's (the property below).
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_heads", heads)
        # ``aput`` can skip the task that protects a put from cancellation when nothing
        # in it suspends: the head store swaps in-process (memory://) and the saver's
        # ``aput`` is InMemorySaver's own, which only calls the synchronous ``put``.
        object.__setattr__(
            self, "_inline", heads.swaps_inline and type(inner).aput is InMemorySaver.aput
        )
        if "get_next_version" in type(self).__dict__:
            # Called for every channel written at every step: the saver's own bound method,
            # not a delegating frame (the class keeps its override for capability checks).
            object.__setattr__(self, "get_next_version", inner.get_next_version)

    def __repr__(self) -> str:
        return f"guard_checkpointer({self._inner!r}, {self._heads.coord!r})"

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the wrapper lacks: extras such as setup/asetup/conn.
        if name.startswith("__") or name in ("_inner", "_heads"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def serde(self) -> Any:
        """The wrapped saver's serializer (the wrapper serialises nothing itself)."""
        return self._inner.serde

    @serde.setter
    def serde(self, value: Any) -> None:
        self._inner.serde = value

    def with_allowlist(self, extra_allowlist: Collection[tuple[str, ...]]) -> Any:
        """Wrap ``saver.with_allowlist(...)``, sharing this wrapper's head records."""
        inner = self._inner.with_allowlist(extra_allowlist)
        if inner is self._inner:
            return self
        return wrapper_class(type(inner))(inner, self._heads)


# -- the methods a wrapper class may override (only those the wrapped class overrides) ------


# The base class's delta-channel history (run on the wrapper when the wrapped class does not
# override it) reads ancestors by checkpoint_id through get_tuple: those reads are a walk,
# not a run choosing where to fork, so they must not mark forks (a racing run's parent would
# then pass unchecked). Told apart by the calling function, looked up before any await.
_WALKS: Final = frozenset(
    {
        BaseCheckpointSaver.get_delta_channel_history.__code__,
        BaseCheckpointSaver.aget_delta_channel_history.__code__,
    }
)


def _get_tuple(self: _Guarded, config: Config, *args: Any, **kwargs: Any) -> Any:
    walking = sys._getframe(1).f_code in _WALKS
    found = self._inner.get_tuple(config, *args, **kwargs)
    if not walking:
        self._heads.saw(config, found)
    return found


async def _aget_tuple(self: _Guarded, config: Config, *args: Any, **kwargs: Any) -> Any:
    walking = sys._getframe(1).f_code in _WALKS
    self._heads.note_loop()
    found = await self._inner.aget_tuple(config, *args, **kwargs)
    if not walking:
        self._heads.saw(config, found)
    return found


def _get(self: _Guarded, config: Config, *args: Any, **kwargs: Any) -> Any:
    found = self._inner.get(config, *args, **kwargs)
    self._heads.saw(config, found)
    return found


async def _aget(self: _Guarded, config: Config, *args: Any, **kwargs: Any) -> Any:
    found = await self._inner.aget(config, *args, **kwargs)
    self._heads.saw(config, found)
    return found


def _list(self: _Guarded, config: Config, *args: Any, **kwargs: Any) -> Iterator[Any]:
    return self._inner.list(config, *args, **kwargs)


def _alist(self: _Guarded, config: Config, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    return self._inner.alist(config, *args, **kwargs)


def _put(
    self: _Guarded, config: Config, checkpoint: Any, metadata: Any, new_versions: Any,
    *args: Any, **kwargs: Any,
) -> Any:  # fmt: skip
    inner = self._inner
    return self._heads.put_now(
        config,
        checkpoint,
        lambda: inner.put(config, checkpoint, metadata, new_versions, *args, **kwargs),
        lambda head: inner.get_tuple(_at(config, head)) is not None,
    )


async def _aput(
    self: _Guarded, config: Config, checkpoint: Any, metadata: Any, new_versions: Any,
    *args: Any, **kwargs: Any,
) -> Any:  # fmt: skip
    inner = self._inner
    if self._inline:
        # Invariant (see Heads.put): no cancellation may land between the head swap and
        # the saver's write, nor inside the write. Here neither suspends, so from the swap
        # to the end of the write there is no await at all: nothing to cancel.
        return self._heads.put_now(
            config,
            checkpoint,
            lambda: inner.put(config, checkpoint, metadata, new_versions, *args, **kwargs),
            lambda head: inner.get_tuple(_at(config, head)) is not None,
        )
    plan = self._heads.plan(config, checkpoint)

    async def exists(head: str) -> bool:
        return await self._inner.aget_tuple(_at(config, head)) is not None

    return await self._heads.put(
        plan,
        lambda: self._inner.aput(config, checkpoint, metadata, new_versions, *args, **kwargs),
        exists,
        uncancelled=uncancelled_save(config),
    )


def _at(config: Config, checkpoint_id: str) -> Config:
    """The config addressing one checkpoint of ``config``'s thread and namespace."""
    configurable = config["configurable"]
    return {
        "configurable": {
            "thread_id": configurable["thread_id"],
            "checkpoint_ns": configurable.get("checkpoint_ns") or "",
            "checkpoint_id": checkpoint_id,
        }
    }


# ``task_path`` stays a named parameter: LangGraph passes it only to savers whose
# ``put_writes`` / ``aput_writes`` signature has it (``pregel/_checkpoint.py``).
def _put_writes(
    self: _Guarded, config: Config, writes: Sequence[tuple[str, Any]], task_id: str,
    task_path: str = "", *args: Any, **kwargs: Any,
) -> None:  # fmt: skip
    check_lease(config, (config.get("configurable") or {}).get("thread_id"))
    self._inner.put_writes(config, writes, task_id, task_path, *args, **kwargs)


async def _aput_writes(
    self: _Guarded, config: Config, writes: Sequence[tuple[str, Any]], task_id: str,
    task_path: str = "", *args: Any, **kwargs: Any,
) -> None:  # fmt: skip
    configurable = config.get("configurable") or {}
    lease = configurable.get(LEASE_KEY)
    if not isinstance(lease, Lease) or lease.lost:
        # The config's own lease, held, is all check_lease would find; anything else
        # (no marker, a lost lease) takes the full check.
        check_lease(config, configurable.get("thread_id"))
    await self._inner.aput_writes(config, writes, task_id, task_path, *args, **kwargs)


def _get_delta_channel_history(self: _Guarded, *args: Any, **kwargs: Any) -> Any:
    return self._inner.get_delta_channel_history(*args, **kwargs)


async def _aget_delta_channel_history(self: _Guarded, *args: Any, **kwargs: Any) -> Any:
    return await self._inner.aget_delta_channel_history(*args, **kwargs)


def _get_next_version(self: _Guarded, current: Any, channel: Any = None) -> Any:
    return self._inner.get_next_version(current, channel)


def _config_specs(self: _Guarded) -> list[Any]:
    return list(self._inner.config_specs)


#: Method name -> the wrapper's implementation, used only if the wrapped class overrides it.
MIRRORED: Final[dict[str, Callable[..., Any]]] = {
    "get": _get,
    "aget": _aget,
    "get_tuple": _get_tuple,
    "aget_tuple": _aget_tuple,
    "list": _list,
    "alist": _alist,
    "put": _put,
    "aput": _aput,
    "put_writes": _put_writes,
    "aput_writes": _aput_writes,
    "delete_thread": delete_thread,
    "adelete_thread": adelete_thread,
    "delete_for_runs": delete_for_runs,
    "adelete_for_runs": adelete_for_runs,
    "copy_thread": copy_thread,
    "acopy_thread": acopy_thread,
    "prune": prune,
    "aprune": aprune,
    "get_delta_channel_history": _get_delta_channel_history,
    "aget_delta_channel_history": _aget_delta_channel_history,
    "get_next_version": _get_next_version,
}


def _delegate(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """A plain delegating method: for saver methods added to LangGraph after this wrapper."""
    if inspect.isasyncgenfunction(method):

        def agen(self: _Guarded, *args: Any, **kwargs: Any) -> Any:
            return getattr(self._inner, name)(*args, **kwargs)

        return agen
    if inspect.iscoroutinefunction(method):

        async def coro(self: _Guarded, *args: Any, **kwargs: Any) -> Any:
            return await getattr(self._inner, name)(*args, **kwargs)

        return coro

    def func(self: _Guarded, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._inner, name)(*args, **kwargs)

    return func


#: Handled by ``_Guarded`` itself, whatever the wrapped class does.
_OWN: Final = frozenset({"with_allowlist", "serde", "config_specs"})


def overrides(cls: type, name: str) -> bool:
    """Does ``cls`` override ``BaseCheckpointSaver.<name>`` (as capability detection asks)?"""
    return getattr(cls, name, None) is not getattr(BaseCheckpointSaver, name, None)


_classes: dict[type, type[_Guarded]] = {}


def wrapper_class(wrapped: type[BaseCheckpointSaver[Any]]) -> type[_Guarded]:
    """The wrapper class for savers of type ``wrapped`` (one per type, cached)."""
    cls = _classes.get(wrapped)
    if cls is None:
        cls = _classes.setdefault(wrapped, _build(wrapped))
    return cls


def _build(wrapped: type[BaseCheckpointSaver[Any]]) -> type[_Guarded]:
    # The implementations themselves, not functools.wraps copies: ``__wrapped__`` would
    # make ``inspect.signature`` report the wrapped saver's signature, not ours.
    namespace: dict[str, Any] = {
        name: impl for name, impl in MIRRORED.items() if overrides(wrapped, name)
    }
    # Methods of the base class this module does not know (LangGraph adds optional ones
    # from release to release): delegated as they are, again only where overridden.
    for name, method in vars(BaseCheckpointSaver).items():
        if name.startswith("_") or name in namespace or name in MIRRORED or name in _OWN:
            continue
        if callable(method) and overrides(wrapped, name):
            namespace[name] = _delegate(name, method)
    if overrides(wrapped, "config_specs"):
        namespace["config_specs"] = property(_config_specs)
    namespace["wrapped"] = wrapped
    namespace["__module__"] = __name__
    namespace["__qualname__"] = f"Guarded{wrapped.__name__}"
    return type(f"Guarded{wrapped.__name__}", (_Guarded,), namespace)
