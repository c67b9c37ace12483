"""RESP encoding of our own script calls, cheaper than redis-py's ``pack_command``.

A lock operation is one ``EVALSHA`` whose head (command, SHA, key count and the lock's
keys) is the same for every call on that lock and script: it is encoded once and cached
(:func:`pack_script`), so a call encodes only its few arguments. redis-py's general
``pack_command`` runs its encoder and length checks on every word of every call, which on
a small machine was about a tenth of the client's CPU per acquire+release. Only for the
connections ``Link`` makes itself (a user's client encodes its own commands).

Words are ``bytes`` (sent as they are), ``str`` (UTF-8, as redis-py's default encoder)
or ``int`` (decimal); nothing else is ever sent by this backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

__all__ = ["pack_script", "word"]


def word(arg: object) -> bytes:
    """One RESP bulk string: ``$<length>\\r\\n<data>\\r\\n``."""
    if isinstance(arg, bytes):
        data = arg
    elif isinstance(arg, str):
        data = arg.encode()
    elif isinstance(arg, int) and not isinstance(arg, bool):
        data = b"%d" % arg
    else:
        raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")
    return b"$%d\r\n%s\r\n" % (len(data), data)


@lru_cache(maxsize=8192)
def _head(sha: bytes, keys: tuple[bytes, ...]) -> bytes:
    return b"".join(map(word, (b"EVALSHA", sha, len(keys), *keys)))


def pack_script(sha: bytes, keys: Sequence[bytes], args: Sequence[object]) -> bytes:
    """``EVALSHA sha len(keys) *keys *args`` as one RESP array, its head from a cache."""
    head = _head(sha, keys if isinstance(keys, tuple) else tuple(keys))
    return b"*%d\r\n%s%s" % (3 + len(keys) + len(args), head, b"".join(map(word, args)))
