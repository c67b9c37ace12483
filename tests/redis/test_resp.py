"""``redis/_resp.py``: our encoding of script calls is byte for byte redis-py's."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from agentlocks.backends.redis._names import acquire_keys
from agentlocks.backends.redis._resp import pack_script, word
from agentlocks.backends.redis._scripts import ACQUIRE, RELEASE, lock_keys


def redis_py(*args: object) -> bytes:
    """What redis-py's own ``pack_command`` sends for ``args``."""
    return b"".join(Connection().pack_command(*args))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "args",
    [
        ("abcdef0123456789:1|x|0|30000", "1|-1|1", b"4:ns-1:l:k"),
        ("abcdef0123456789:12|s|3|1000", 0, -1, 2**40),
        ("clé ünïcode", b"\x00\xff raw\r\n bytes", ""),
        (),
    ],
)
def test_a_script_call_packs_as_redis_py_packs_it(args: tuple[object, ...]) -> None:
    """pack_script gives the exact bytes of redis-py's pack_command, for every kind of word."""
    keys, _ = acquire_keys("ns-1", "l:k")
    assert pack_script(ACQUIRE.sha, keys, args) == redis_py(
        b"EVALSHA", ACQUIRE.sha, len(keys), *keys, *args
    )


def test_the_cached_head_follows_the_keys_and_the_script() -> None:
    """Two locks, two scripts, keys as a list: each call carries its own head."""
    a, b = lock_keys("ns", "l:a"), lock_keys("ns", "l:b")
    for sha, keys in [(ACQUIRE.sha, a), (RELEASE.sha, a), (RELEASE.sha, b), (RELEASE.sha, [*b])]:
        assert pack_script(sha, keys, ("m",)) == redis_py(b"EVALSHA", sha, len(keys), *keys, "m")


def test_only_bytes_str_and_int_are_sent() -> None:
    """A float or a bool is refused rather than sent in some guessed spelling."""
    for bad in (1.5, True, None):
        with pytest.raises(TypeError, match="cannot send"):
            word(bad)
