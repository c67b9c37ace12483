"""Scheme -> backend class, resolved lazily.

The table maps a URL scheme to a ``"module:Class"`` string; nothing is imported until a URL
with that scheme is used, so ``import agentlocks`` loads no driver. Third parties add a
scheme with :func:`register_backend` or an entry point in the ``agentlocks.backends`` group
(name = scheme, value = ``"module:Class"``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Final, cast

from ._url import check_scheme
from .backends._base import Backend
from .errors import ConfigError

ENTRY_POINT_GROUP: Final = "agentlocks.backends"


@dataclass(frozen=True, slots=True)
class _Entry:
    target: str
    driver: str | None = None  # top-level module the backend needs, checked before import
    extra: str | None = None  # the pip extra that installs that driver


_BUILTIN: Final = {
    "memory": _Entry("agentlocks.backends.memory:MemoryBackend"),
    "redis": _Entry("agentlocks.backends.redis:RedisBackend", "redis", "redis"),
    "rediss": _Entry("agentlocks.backends.redis:RedisBackend", "redis", "redis"),
    # Redis deployments beyond one server: same backend, other clients (redis/_clients.py).
    "redis+cluster": _Entry("agentlocks.backends.redis:RedisBackend", "redis", "redis"),
    "rediss+cluster": _Entry("agentlocks.backends.redis:RedisBackend", "redis", "redis"),
    "redis+sentinel": _Entry("agentlocks.backends.redis:RedisBackend", "redis", "redis"),
    "rediss+sentinel": _Entry("agentlocks.backends.redis:RedisBackend", "redis", "redis"),
    "postgres": _Entry("agentlocks.backends.postgres:PostgresBackend", "asyncpg", "postgres"),
    "postgresql": _Entry("agentlocks.backends.postgres:PostgresBackend", "asyncpg", "postgres"),
}
_registered: dict[str, _Entry] = {}
_entry_points_loaded = False


def register_backend(scheme: str, target: str, *, replace: bool = False) -> None:
    """Make URLs with ``scheme`` use the backend class named by ``target``.

    Args:
        scheme: URL scheme, e.g. ``"etcd"`` (case-insensitive).
        target: ``"package.module:ClassName"``; imported on first use, not now.
        replace: Allow replacing a scheme that is already registered (built-ins included).

    Raises:
        ConfigError: The scheme or target is malformed, or the scheme is taken and
            ``replace`` is False.

    Example:
        >>> import agentlocks
        >>> agentlocks.register_backend("mem2", "agentlocks.backends.memory:MemoryBackend")
        >>> agentlocks.connect("mem2://")
        Coordinator(url='mem2://', namespace='agentlocks')
    """
    scheme = check_scheme(scheme)
    _check_target(target)
    if not replace and (scheme in _registered or scheme in _BUILTIN):
        raise ConfigError(
            f"scheme {scheme!r} is already registered; pass replace=True to override it"
        )
    _registered[scheme] = _Entry(target)


def known_schemes() -> list[str]:
    """Every scheme that ``connect()`` accepts now, sorted."""
    _load_entry_points()
    return sorted(set(_BUILTIN) | set(_registered))


def load_backend(scheme: str) -> type[Backend]:
    """Import and return the backend class for ``scheme``; ``ConfigError`` if impossible."""
    entry = _registered.get(scheme) or _BUILTIN.get(scheme)
    if entry is None:
        _load_entry_points()
        entry = _registered.get(scheme)
    if entry is None:
        raise ConfigError(
            f"unknown URL scheme {scheme!r}; accepted: {', '.join(known_schemes())} "
            "(add one with agentlocks.register_backend)"
        )
    if entry.driver is not None and importlib.util.find_spec(entry.driver) is None:
        raise ConfigError(
            f"the {scheme}:// backend needs the {entry.driver!r} package: "
            f"pip install 'agentlocks[{entry.extra}]'"
        )
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing_itself = isinstance(exc, ModuleNotFoundError) and exc.name == module_name
        if missing_itself and module_name.startswith("agentlocks."):
            raise ConfigError(
                f"the {scheme}:// backend is not available in this version of agentlocks; "
                f"available now: {', '.join(_importable_schemes())}"
            ) from exc
        raise ConfigError(f"cannot import the {scheme}:// backend {entry.target!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"{entry.target!r} does not name a class in {module_name}")
    return cast("type[Backend]", cls)


def _importable_schemes() -> list[str]:
    return [scheme for scheme in known_schemes() if _importable(scheme)]


def _importable(scheme: str) -> bool:
    module_name = (_registered.get(scheme) or _BUILTIN[scheme]).target.partition(":")[0]
    try:
        return importlib.util.find_spec(module_name) is not None
    except ImportError:  # a missing parent package
        return False


def _check_target(target: object) -> None:
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise ConfigError(f"backend target must be 'package.module:ClassName', got {target!r}")


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        scheme = ep.name.lower()
        if scheme not in _registered and scheme not in _BUILTIN:
            _registered[scheme] = _Entry(ep.value)
