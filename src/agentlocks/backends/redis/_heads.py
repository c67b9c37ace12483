"""Head records of ``redis://`` (``HeadStore`` of ``_capabilities.py``): ``lua/heads.lua``.

All head records beside one lock resource live in one hash (field -> expiry, token, head)
plus a sorted set of the fields' expiries, both under the lock's hash tag, so a swap is one
script on one cluster slot. Expired fields are swept by later swaps and both keys carry a
TTL, so a resource nobody writes any more leaves nothing behind.
"""

from __future__ import annotations

import math
from typing import Final, Literal

from agentlocks.backends._capabilities import HeadSwap

from ._link import Link
from ._scripts import HEADS, head_keys

__all__ = ["drop_heads", "swap_head"]

_OUTCOMES: Final[dict[int, Literal["swapped", "conflict", "fenced"]]] = {
    1: "swapped",
    0: "conflict",
    -1: "fenced",
}


def _text(value: object) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


async def swap_head(
    link: Link, namespace: str, resource: str, field: str, expected: str | None, new: str,
    token: int | None, ttl: float,
) -> HeadSwap:  # fmt: skip
    """``HeadStore.swap_head`` in one script call."""
    ms = max(1, math.ceil(ttl * 1000))
    condition = "a" if expected is None else "=" + expected
    reply = await link.run(
        HEADS, head_keys(namespace, resource), "swap", field, condition, new,
        "" if token is None else token, ms,
    )  # fmt: skip
    stored, age = _text(reply[2]), _text(reply[3])
    return HeadSwap(
        _OUTCOMES[int(reply[0])],
        _text(reply[1]),
        int(stored) if stored else None,
        int(age) / 1000 if age else None,
    )


async def drop_heads(link: Link, namespace: str, resource: str) -> None:
    """``HeadStore.drop_heads``: delete both keys."""
    await link.run(HEADS, head_keys(namespace, resource), "drop")
