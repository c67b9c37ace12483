"""agentlocks: fair, fenced, cancellation-safe locks for asyncio agent backends.

One API, three backends chosen by URL: ``memory://`` (default), ``redis://`` and
``postgresql://``. See ``docs/`` and API.md for the contract.
"""

from ._lease import Lease as Lease
from ._options import LockOptions as LockOptions
from ._options import SemaphoreOptions as SemaphoreOptions
from ._registry import register_backend as register_backend
from ._registry_lock import Registry as Registry
from .backends._base import HolderInfo as HolderInfo
from .backends._base import KeyInfo as KeyInfo
from .coordinator import Coordinator as Coordinator
from .coordinator import connect as connect
from .errors import AcquireTimeout as AcquireTimeout
from .errors import AgentLocksError as AgentLocksError
from .errors import BackendError as BackendError
from .errors import Busy as Busy
from .errors import ConcurrentRunError as ConcurrentRunError
from .errors import ConfigError as ConfigError
from .errors import InvalidKey as InvalidKey
from .errors import LeaseLost as LeaseLost
from .errors import QueueFull as QueueFull
from .errors import ThreadBusy as ThreadBusy
from .errors import Unavailable as Unavailable

__version__ = "0.1.0.dev0"

__all__ = [
    "AcquireTimeout",
    "AgentLocksError",
    "BackendError",
    "Busy",
    "ConcurrentRunError",
    "ConfigError",
    "Coordinator",
    "HolderInfo",
    "InvalidKey",
    "KeyInfo",
    "Lease",
    "LeaseLost",
    "LockOptions",
    "QueueFull",
    "Registry",
    "SemaphoreOptions",
    "ThreadBusy",
    "Unavailable",
    "__version__",
    "connect",
    "register_backend",
]
