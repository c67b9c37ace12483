"""Backends: ``memory`` (in-process); ``redis`` and ``postgres`` are loaded lazily by scheme.

The contract every backend keeps is :class:`agentlocks.backends.Backend`, documented once in
``_base.py``.
"""

from agentlocks._url import Settings as Settings

from ._base import Backend as Backend
from ._base import Enumerable as Enumerable
from ._base import FastPath as FastPath
from ._base import Grant as Grant
from ._base import HeadStore as HeadStore
from ._base import HeadSwap as HeadSwap
from ._base import HolderInfo as HolderInfo
from ._base import KeyInfo as KeyInfo
from ._base import LostCallback as LostCallback
from ._base import SignalCallback as SignalCallback

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
