"""The ``redis://`` backend (and ``rediss://``, ``redis+cluster://``, ``redis+sentinel://``).

How it works, once: ``docs/backends.md`` ("Redis"). Where each part lives:

- ``_backend.py``: :class:`RedisBackend`, the ``Backend`` methods.
- ``lua/``: the scripts, the only code that changes lock state (``_scripts.py`` loads them
  and names the keys of a lock); tokens come from ``lua/_core.lua``.
- ``_waiting.py``: how a queued request waits and is woken by a pushed grant;
  ``_shards.py``: the same inbox on a cluster (sharded pub/sub).
- ``_link.py``: connections, call deadlines and error mapping; ``_resp.py``: the encoding
  of script calls; ``_flow.py``: the call timer and FIFO gates; ``_clients.py`` /
  ``_routes.py``: deployments (single, cluster, sentinel) and cluster routing.
- ``_signals.py`` and ``_heads.py``: the signal and head-record stores; ``_names.py``:
  ``inspect`` by name.

Renewal is shared by every remote backend: ``agentlocks/_renewal.py``.
"""

from ._backend import RedisBackend as RedisBackend
from ._backend import RedisHandle as RedisHandle

__all__ = ["RedisBackend", "RedisHandle"]
