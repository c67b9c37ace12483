"""The public surface: exports, error tree, reprs, and no driver imported by `import agentlocks`."""

from __future__ import annotations

import subprocess
import sys

import agentlocks
from agentlocks import errors


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ is sorted and names every public attribute, and only those."""
    public = {name for name in vars(agentlocks) if not name.startswith("_")}
    public -= {"annotations", "errors", "backends", "coordinator", "testing"}  # submodules
    public -= {"decorators", "fastapi", "langgraph", "observability", "cli"}  # set once imported
    assert sorted(agentlocks.__all__) == agentlocks.__all__
    assert set(agentlocks.__all__) - {"__version__"} == public


def test_import_loads_no_driver_and_no_framework() -> None:
    """`import agentlocks` imports neither redis, asyncpg, langgraph, fastapi nor pytest."""
    code = (
        "import sys, agentlocks; agentlocks.connect();"
        "bad = [m for m in ('redis', 'asyncpg', 'langgraph', 'fastapi', 'starlette', 'pytest',"
        " 'hypothesis', 'opentelemetry') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_error_tree_matches_the_contract() -> None:
    """Every error derives from AgentLocksError as API.md draws it."""
    tree = {
        errors.Unavailable: errors.AgentLocksError,
        errors.Busy: errors.Unavailable,
        errors.QueueFull: errors.Unavailable,
        errors.AcquireTimeout: errors.Unavailable,
        errors.ThreadBusy: errors.AgentLocksError,
        errors.ConcurrentRunError: errors.AgentLocksError,
        errors.LeaseLost: errors.AgentLocksError,
        errors.BackendError: errors.AgentLocksError,
        errors.ConfigError: errors.AgentLocksError,
        errors.InvalidKey: errors.AgentLocksError,
    }
    for cls, parent in tree.items():
        assert cls.__bases__[0] is parent, cls
        assert getattr(agentlocks, cls.__name__) is cls
    assert issubclass(errors.AcquireTimeout, TimeoutError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.InvalidKey, ValueError)
    codes = [cls.code for cls in tree]
    assert len(set(codes)) == len(codes)


def test_unavailable_carries_key_and_retry_after() -> None:
    """Unavailable errors carry the key and a retry_after estimate in seconds."""
    exc = errors.QueueFull("full", key="user:1", retry_after=2.5)
    assert (exc.key, exc.retry_after, exc.message, exc.code) == (
        "user:1",
        2.5,
        "full",
        "queue_full",
    )
    assert errors.Busy("held").retry_after == 1.0


async def test_lease_and_context_reprs_show_state() -> None:
    """Reprs show key, token, mode and state; never anything secret."""
    coord = agentlocks.connect()
    ctx = coord.acquire("thread:1", shared=True)
    assert repr(ctx) == "Lease(key='thread:1', shared=True, state=pending)"
    assert repr(coord.semaphore("llm", 2)) == "Lease(key='llm', shared=True, state=pending)"
    lease = await ctx
    assert repr(lease) == "Lease(key='thread:1', token=1, shared=True, state=held)"
    await lease.release()
    assert repr(lease) == "Lease(key='thread:1', token=1, shared=True, state=released)"
    assert repr(coord.registry("tools")) == "Registry('tools')"


def test_inlined_lease_construction_matches_the_constructor() -> None:
    """acquire()'s inlined Lease construction sets every slot exactly as Lease() does."""
    coord = agentlocks.connect()
    fast = coord.acquire("k")
    slow = agentlocks.Lease(coord, fast._resource, fast._request)
    for slot in agentlocks.Lease.__slots__:
        assert getattr(fast, slot) == getattr(slow, slot), slot
