"""The decorators keep the wrapped function's types: checked by mypy --strict, run by pytest.

``pyproject.toml`` lists this file among mypy's ``files``, so ``scripts/test`` type-checks
it. Each ``# type: ignore[code]`` below marks a call mypy must reject: with
``warn_unused_ignores`` (part of ``--strict``) an ignore that is not needed is itself an
error, so if a decorator erased the signature (``Callable[..., Any]``), mypy would fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, assert_type

from starlette.requests import Request

import agentlocks
from agentlocks import Lease
from agentlocks.decorators import Backpressure, Serialized
from agentlocks.fastapi import serialized as serialized_dependency

coord = agentlocks.connect("memory://")
serial = coord.serialized("user:{user_id}", timeout=30)
cap = coord.backpressure("ingest", capacity=5, max_waiting=50, timeout=30)
assert_type(serial, Serialized)
assert_type(cap, Backpressure)


@coord.serialized("user:{user_id}")
@coord.backpressure("ingest", capacity=5, max_waiting=50, timeout=30)
async def ingest(user_id: str, payload: dict[str, int], *, source: str = "api") -> list[str]:
    """Stacked as API.md shows."""
    return [user_id, source, *payload]


class Service:
    """A class whose method is serialized."""

    @coord.serialized("user:{user_id}")
    async def handle(self, user_id: str) -> int:
        """A decorated method."""
        return len(user_id)


async def _static_checks() -> None:
    """Never called: mypy checks these lines; each ignore is an error it must report."""
    as_callable: Callable[[str, dict[str, int]], Coroutine[Any, Any, list[str]]] = ingest
    assert_type(await as_callable("u", {}), list[str])
    assert_type(await ingest("u", {}), list[str])
    assert_type(await Service().handle("u"), int)
    await ingest(1, {})  # type: ignore[arg-type]
    await ingest("u")  # type: ignore[call-arg]
    await ingest("u", {}, source=3)  # type: ignore[arg-type]
    await ingest("u", {}, sink="x")  # type: ignore[call-arg]
    await Service().handle(3)  # type: ignore[arg-type]
    wrong: Callable[[int], Coroutine[Any, Any, list[str]]] = ingest  # type: ignore[assignment]

    def sync(user_id: str) -> int:
        return 0

    serial(sync)  # type: ignore[arg-type]
    cap(sync)  # type: ignore[arg-type]
    del wrong


def _option_checks() -> None:
    """Never called: every option is typed (``**options: Unpack[...]``) wherever it is taken."""
    assert_type(coord.serialized("k", shared=True, on_lost="ignore", lease_ttl=5), Serialized)
    coord.serialized("k", timeout="soon")  # type: ignore[arg-type]
    coord.serialized("k", on_lost="explode")  # type: ignore[arg-type]
    coord.serialized("k", ttl=5)  # type: ignore[call-arg]
    assert_type(coord.backpressure("b", capacity=2, on_lost="ignore"), Backpressure)
    coord.backpressure("b", capacity=2, wait=False)  # type: ignore[call-arg]
    coord.backpressure("b", capacity=2, max_waiting="many")  # type: ignore[arg-type]
    dependency = serialized_dependency(coord, "user:{user_id}", timeout=5, shared=True)
    assert_type(dependency, Callable[[Request], AsyncIterator[Lease]])
    serialized_dependency(coord, "k", wait="no")  # type: ignore[arg-type]
    serialized_dependency(coord, "k", capacity=3)  # type: ignore[call-arg]
    coord.acquire("k", max_waiting=1.5)  # type: ignore[arg-type]
    coord.semaphore("s", 2, shared=True)  # type: ignore[call-arg]


async def test_decorated_calls_return_the_wrapped_result_types() -> None:
    """At run time the stacked function and the method return what their types say."""
    result = await ingest("u", {"a": 1}, source="sdk")
    assert_type(result, list[str])
    assert result == ["u", "sdk", "a"]
    count = await Service().handle("abc")
    assert_type(count, int)
    assert count == 3


async def test_slot_yields_a_lease() -> None:
    """``async with limiter.slot() as lease`` is typed (and is) a Lease."""
    async with cap.slot() as lease:
        assert_type(lease, Lease)
        assert isinstance(lease, Lease)
