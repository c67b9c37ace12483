"""The Redis backend's Lua scripts and the key layout they work on.

Scripts live in ``lua/*.lua``, each headed by its KEYS/ARGV/return comment. The lock
scripts share the state model, ``lua/_core.lua`` and ``lua/_lib.lua``, inserted here at
each script's ``-- @core`` and ``-- @lib`` lines (a fast path between the two runs before
the queue machinery is defined, which saves server time on every uncontended call). A
script is identified by the SHA1 of its final text: it is called with ``EVALSHA`` and,
when the server answers ``NOSCRIPT`` (first use, or the server restarted and lost its
script cache), sent once with ``EVAL``, which also caches it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib.resources import files
from typing import Any, Final

from redis.exceptions import NoScriptError

__all__ = [
    "ACQUIRE",
    "GENERATION",
    "HEADS",
    "INBOX_PREFIX",
    "INSPECT",
    "REFRESH",
    "RELEASE",
    "RENEW",
    "VERIFY",
    "Call",
    "Execute",
    "ExecuteMany",
    "LockKeys",
    "Script",
    "cluster_variant",
    "generation_key",
    "head_keys",
    "lock_keys",
    "run_batch",
    "run_script",
    "shard_channel",
]

#: Pub/sub channel prefix of the coordinators' inboxes (``_lib.lua`` publishes to it).
INBOX_PREFIX: Final = "agentlocks:inbox:"

LockKeys = tuple[bytes, bytes, bytes, bytes]
"""The four keys of one lock, in ``_lib.lua``'s KEYS order (h, q, d, t), encoded once."""

Call = tuple[Sequence[bytes], Sequence[object]]
"""One script call of a batch: its KEYS and its ARGV."""


@dataclass(frozen=True, slots=True)
class Script:
    """One loaded script: its name, full text and SHA1 (what ``EVALSHA`` takes)."""

    name: str
    text: str
    sha: bytes


def _load(name: str) -> Script:
    folder = files("agentlocks.backends.redis") / "lua"
    text = (folder / f"{name}.lua").read_text("utf-8")
    for part in ("core", "lib"):
        marker = f"\n-- @{part}\n"
        if marker in text:
            text = text.replace(marker, "\n" + (folder / f"_{part}.lua").read_text("utf-8"), 1)
    return Script(name, text, hashlib.sha1(text.encode("utf-8")).hexdigest().encode())


ACQUIRE: Final = _load("acquire")
RELEASE: Final = _load("release")
RENEW: Final = _load("renew")
REFRESH: Final = _load("refresh")
VERIFY: Final = _load("verify")
INSPECT: Final = _load("inspect")
GENERATION: Final = _load("generation")
HEADS: Final = _load("heads")


_SHARDED_PUBLISH: Final = (
    "  return redis.call('SPUBLISH', INBOX .. string.match(H, '{[^}]*}') .. ':' .. "
    "string.match(id, '^[^:]+'), id .. ' ' .. fmt(token))"
)


@cache
def cluster_variant(script: Script) -> Script:
    """``script`` as it runs on a Redis Cluster: grants go out by ``SPUBLISH``.

    The channel is the lock's own shard channel (:func:`shard_channel`), in the slot of
    the script's keys, so a grant reaches only that slot's shard, and ``SPUBLISH`` counts
    the receivers there (what the dead-waiter check of ``_lib.lua`` needs).
    """
    lines = script.text.split("\n")
    marked = [i for i, line in enumerate(lines) if line.endswith("-- @publish")]
    if not marked:
        return script  # touches no queue: the same everywhere
    (index,) = marked
    lines[index] = _SHARDED_PUBLISH
    text = "\n".join(lines)
    return Script(script.name, text, hashlib.sha1(text.encode("utf-8")).hexdigest().encode())


def shard_channel(keys: Sequence[bytes], coordinator_id: str) -> bytes:
    """The shard channel on which ``coordinator_id`` hears grants of the lock ``keys``."""
    tag = keys[0][keys[0].index(b"{") : keys[0].index(b"}") + 1]
    return INBOX_PREFIX.encode() + tag + b":" + coordinator_id.encode()


def _tag(namespace: str, name: str) -> str:
    # Length-prefixed so that no (namespace, name) pair can collide with another; hashed so
    # that braces in user keys can never become Redis Cluster hash tags of their own.
    data = f"{len(namespace)}:{namespace}:{name}".encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@lru_cache(maxsize=4096)
def lock_keys(namespace: str, resource: str) -> LockKeys:
    """The keys of ``resource``'s lock in ``namespace``; all four share one hash tag.

    Bytes, so that the driver sends them as they are (its cheapest encoding path).
    """
    base = f"agentlocks:{{{_tag(namespace, resource)}}}:".encode()
    return (base + b"h", base + b"q", base + b"d", base + b"t")


def generation_key(namespace: str, name: str) -> bytes:
    """The key holding the published generation of registry ``name``.

    It shares the hash tag of the registry's lock (the lock ``"l:" + name``), so that a
    publish is fenced by the writer's grant in one single-slot script.
    """
    return lock_keys(namespace, "l:" + name)[0][:-1] + b"g"


def head_keys(namespace: str, resource: str) -> tuple[bytes, bytes]:
    """The keys of the head records beside ``resource``'s lock (``lua/heads.lua``).

    Same hash tag as the lock's own keys: one cluster slot for the lock and its heads.
    """
    base = lock_keys(namespace, resource)[0][:-1]
    return (base + b"hd", base + b"hx")


Execute = Callable[..., Awaitable[Any]]
"""Send one command (its words as arguments) and return its reply; errors are raised."""

ExecuteMany = Callable[[Sequence[Sequence[object]]], Awaitable[list[Any]]]
"""Send commands in one pipelined round trip; one reply (or error object) each, in order."""


async def run_script(execute: Execute, script: Script, keys: Sequence[bytes], *args: object) -> Any:
    """Run ``script`` in one round trip (two, once, if the server lacks it)."""
    try:
        return await execute(b"EVALSHA", script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await execute(b"EVAL", script.text, len(keys), *keys, *args)


async def run_batch(
    execute: Execute, execute_many: ExecuteMany, script: Script, calls: Sequence[Call]
) -> list[Any]:
    """Run ``script`` once per ``(keys, args)`` in one pipelined round trip.

    Not a transaction: each call is a separate script, so the calls may touch different
    cluster slots. A per-call error comes back as an exception object in the result list.
    Only used for idempotent scripts, so a batch that met ``NOSCRIPT`` is simply sent
    again once the script is loaded.
    """
    commands = [(b"EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
    results: list[Any] = await execute_many(commands)
    if any(isinstance(r, NoScriptError) for r in results):
        await execute(b"SCRIPT", b"LOAD", script.text)
        results = await execute_many(commands)
    return results
