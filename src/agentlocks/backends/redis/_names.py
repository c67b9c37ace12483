"""Name records of Redis locks, and finding locks by name with ``SCAN`` (``inspect``).

Lock keys are hashes (``agentlocks:{<tag>}:h|q|d|t``): user keys never appear in key names.
So that ``agentlocks inspect`` can list locks by name, ``acquire.lua`` also writes a *name
record* ``agentlocks:{<tag>}:n`` holding ``"<len(namespace)>:<namespace>:<resource>"``,
with the lifetime of the last token (10 minutes after the last request). Enumeration is
``SCAN`` over ``agentlocks:{*}:n`` (never ``KEYS``: it does not block the server), then one
pipelined ``GET`` per page of matches. A record is trusted only if hashing its namespace
and resource gives back its own tag, so a stray key that happens to match the pattern is
ignored. Known gap: a lock held for more than 10 minutes with no other request on it has
outlived its record and is not listed (``inspect`` of its exact key still shows it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from typing import Any, Final

from ._scripts import lock_keys

__all__ = ["acquire_keys", "find_resources", "parse_record"]

_PAGE: Final = 500

Command = Callable[..., Awaitable[Any]]
Pipeline = Callable[[Sequence[Sequence[object]]], Awaitable[list[Any]]]


@lru_cache(maxsize=4096)
def acquire_keys(namespace: str, resource: str) -> tuple[tuple[bytes, ...], bytes]:
    """The KEYS of ``acquire.lua`` (the four lock keys and the name key) and its record."""
    keys = lock_keys(namespace, resource)
    record = f"{len(namespace)}:{namespace}:{resource}".encode("utf-8", "surrogatepass")
    return (*keys, keys[0][:-1] + b"n"), record


def parse_record(key: bytes, value: bytes | None) -> tuple[str, str] | None:
    """``(namespace, resource)`` of a name record, or None if it is not one of ours."""
    if value is None:
        return None
    try:
        text = value.decode("utf-8", "surrogatepass")
        size, _, rest = text.partition(":")
        n = int(size)
        namespace, resource = rest[:n], rest[n + 1 :]
    except (UnicodeDecodeError, ValueError):
        return None
    if rest[n : n + 1] != ":" or lock_keys(namespace, resource)[0][:-1] + b"n" != key:
        return None
    return namespace, resource


def _bytes(key: bytes | str) -> bytes:
    return key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key


async def _scan(command: Command, pattern: bytes) -> list[bytes]:
    found: list[bytes] = []
    cursor: bytes | int = b"0"
    while True:
        cursor, page = await command(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", _PAGE)
        found.extend(page)
        if int(cursor) == 0:
            return found


async def find_resources(
    command: Command, pipeline: Pipeline, namespace: str, prefix: str
) -> list[str]:
    """Resources of ``namespace`` whose user-facing name starts with ``prefix``, sorted."""
    names = await _scan(command, b"agentlocks:{*}:n")
    found: set[str] = set()
    for start in range(0, len(names), _PAGE):
        chunk = names[start : start + _PAGE]
        values = await pipeline([(b"GET", key) for key in chunk])
        for key, value in zip(chunk, values, strict=True):
            # A user's client may decode replies (decode_responses=True): compare as bytes.
            raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
            parsed = parse_record(_bytes(key), raw if isinstance(raw, bytes) else None)
            if parsed is not None and parsed[0] == namespace and parsed[1][2:].startswith(prefix):
                found.add(parsed[1])
    return sorted(found)
