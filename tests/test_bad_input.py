"""Bad arguments to acquire/semaphore/inspect/registry fail at call time, before any I/O."""

from __future__ import annotations

import math

import pytest

import agentlocks
from agentlocks import ConfigError, InvalidKey

# A server URL whose server does not exist: any I/O would fail with BackendError or hang,
# so a ConfigError/InvalidKey here proves validation happened first. memory:// is used where
# the backend class must be importable in every environment.
coord = agentlocks.connect("memory://")


@pytest.mark.parametrize(
    "key",
    ["", "x" * 1025, "é" * 513, "🔒" * 257, "\udc80", b"key", 7, None, ["k"]],
)
def test_invalid_keys_raise_invalid_key(key: object) -> None:
    """Empty, over 1024 UTF-8 bytes, unencodable or non-str keys raise InvalidKey."""
    for call in (
        lambda: coord.acquire(key),  # type: ignore[arg-type]
        lambda: coord.semaphore(key, capacity=1),  # type: ignore[arg-type]
        lambda: coord.registry(key),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidKey) as caught:
            call()
        assert isinstance(caught.value, ValueError)
        assert "1024" in str(caught.value) or "Unicode" in str(caught.value)


async def test_inspect_validates_its_key() -> None:
    """inspect() rejects an invalid key with InvalidKey."""
    with pytest.raises(InvalidKey):
        await coord.inspect("")


@pytest.mark.parametrize("key", ["x" * 1024, "é" * 512, "🔒" * 256, "a", "{}: \t"])
def test_boundary_keys_are_accepted(key: str) -> None:
    """Keys of exactly 1024 UTF-8 bytes (any mix of widths) are accepted."""
    coord.acquire(key)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": -1}, "timeout must be None or a number of seconds >= 0"),
        ({"timeout": math.nan}, "NaN"),
        ({"timeout": "5"}, None),  # a numeric string is accepted like the URL form
        ({"timeout": "soon"}, "must be a number of seconds"),
        ({"timeout": True}, "must be a number of seconds"),
        ({"lease_ttl": 0}, "lease_ttl must be a finite number of seconds > 0"),
        ({"lease_ttl": -1.5}, "lease_ttl"),
        ({"lease_ttl": math.inf}, "finite"),
        ({"lease_ttl": math.nan}, "NaN"),
        ({"max_waiting": -1}, "max_waiting must be None or an int >= 0"),
        ({"max_waiting": 1.5}, "max_waiting"),
        ({"max_waiting": True}, "max_waiting"),
        ({"on_lost": "panic"}, "on_lost must be 'cancel' or 'ignore'"),
        ({"shared": 1}, "shared and wait must be bool"),
        ({"wait": "no"}, "shared and wait must be bool"),
    ],
)
def test_bad_options_raise_config_error(options: dict[str, object], message: str | None) -> None:
    """Each bad option raises ConfigError saying what is accepted."""
    if message is None:
        coord.acquire("k", **options)  # type: ignore[arg-type]
        return
    with pytest.raises(ConfigError, match=message):
        coord.acquire("k", **options)  # type: ignore[arg-type]


def test_unknown_options_raise_type_error() -> None:
    """An option the method does not take is a TypeError, as for any keyword parameter."""
    with pytest.raises(TypeError, match="acquire\\(\\) got an unexpected keyword argument 'ttl'"):
        coord.acquire("k", ttl=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'shared'"):
        coord.semaphore("s", 2, shared=True)  # type: ignore[call-arg]


@pytest.mark.parametrize("capacity", [0, -1, 1.5, "2", True, None])
def test_bad_capacity_raises_config_error(capacity: object) -> None:
    """A semaphore capacity that is not an int >= 1 raises ConfigError."""
    with pytest.raises(ConfigError, match="capacity must be an int >= 1"):
        coord.semaphore("s", capacity=capacity)  # type: ignore[arg-type]


def test_semaphore_options_are_validated_like_locks() -> None:
    """semaphore() applies the same option checks as acquire()."""
    with pytest.raises(ConfigError, match="timeout"):
        coord.semaphore("s", capacity=2, timeout=-0.1)
    with pytest.raises(ConfigError, match="on_lost"):
        coord.semaphore("s", capacity=2, on_lost="nope")  # type: ignore[arg-type]


async def test_a_lease_is_acquired_once() -> None:
    """Awaiting or entering a lease that was already acquired raises RuntimeError."""
    lease = coord.acquire("once")
    async with lease:
        with pytest.raises(RuntimeError, match="already acquired"):
            await lease
    with pytest.raises(RuntimeError, match="already acquired"):
        await lease.__aenter__()


async def test_pending_lease_has_no_token_and_cannot_be_released() -> None:
    """A lease that was never awaited says so instead of pretending to hold anything."""
    lease = coord.acquire("never")
    with pytest.raises(RuntimeError, match="has not been acquired"):
        _ = lease.token
    with pytest.raises(RuntimeError, match="has not been acquired"):
        await lease.release()
    with pytest.raises(RuntimeError, match="has not been acquired"):
        await lease.verify()
