"""Backends: ``memory`` (in-process); ``redis`` and ``postgres`` are loaded lazily by scheme.

The contract every backend keeps is :class:`agentlocks.backends.Backend`, documented once in
``_base.py``; the optional capabilities (head records, fast path, listing) in
``_capabilities.py``.
"""

from agentlocks._url import Settings as Settings

from ._base import Backend as Backend
from ._base import Grant as Grant
from ._base import HolderInfo as HolderInfo
from ._base import KeyInfo as KeyInfo
from ._base import LostCallback as LostCallback
from ._base import SignalCallback as SignalCallback
from ._capabilities import Enumerable as Enumerable
from ._capabilities import FastPath as FastPath
from ._capabilities import HeadStore as HeadStore
from ._capabilities import HeadSwap as HeadSwap

__all__ = [
    "Backend",
    "Enumerable",
    "FastPath",
    "Grant",
    "HeadStore",
    "HeadSwap",
    "HolderInfo",
    "KeyInfo",
    "LostCallback",
    "Settings",
    "SignalCallback",
]
