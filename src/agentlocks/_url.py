"""URL and option parsing: ``connect()``'s inputs become one frozen :class:`Settings`.

Everything here runs before any I/O, so every mistake surfaces as a ``ConfigError`` that
names what is accepted. Secrets never leave this module unredacted: ``Settings.url`` keeps
the real URL for the backend, while ``repr()`` and every message use :func:`redact_url`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .errors import ConfigError

DEFAULT_URL: Final = "memory://"
DEFAULT_NAMESPACE: Final = "agentlocks"
DEFAULT_LEASE_TTL: Final = 30.0
MAX_NAMESPACE_BYTES: Final = 128

#: Options every backend accepts, in the URL query or as ``connect()`` keywords.
COMMON_OPTIONS: Final = frozenset({"namespace", "lease_ttl"})

_SCHEME_RE: Final = re.compile(r"^[a-z][a-z0-9+.-]*$")
#: Query options that carry secrets: masked like the URL's password.
SECRET_OPTIONS: Final = frozenset({"sentinel_password"})
_SECRET_QUERY_RE: Final = re.compile(r"(?i)((?:^|[?&])sentinel_password=)[^&#]*")


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated connection settings handed to a backend's constructor.

    Attributes:
        scheme: Lower-case URL scheme, e.g. ``"redis"``.
        url: The URL as given, secrets included (for the backend's driver only).
        namespace: Isolates independent apps sharing one server.
        lease_ttl: Default lease time-to-live in seconds.
        options: Backend-specific options (strings from the query, or keyword values).
        client: A driver client the user already owns (``redis=`` / ``postgres=``), or None.
    """

    scheme: str
    url: str = field(repr=False)
    namespace: str = DEFAULT_NAMESPACE
    lease_ttl: float = DEFAULT_LEASE_TTL
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    client: object | None = field(default=None, repr=False)

    @property
    def redacted_url(self) -> str:
        """The URL with any password replaced by ``***``: safe for logs and messages."""
        return redact_url(self.url)

    def __repr__(self) -> str:
        client = "" if self.client is None else f", client={type(self.client).__name__}"
        return (
            f"Settings(url={self.redacted_url!r}, namespace={self.namespace!r}, "
            f"lease_ttl={self.lease_ttl!r}, options={redact_options(self.options)!r}{client})"
        )


def redact_url(url: str) -> str:
    """Return ``url`` with its passwords (userinfo, ``sentinel_password=``) as ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    query = _SECRET_QUERY_RE.sub(r"\1***", parts.query)
    if password is None and query == parts.query:
        return url
    parts = parts._replace(query=query)
    if password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    return urlunsplit(parts)


def redact_options(options: Mapping[str, object]) -> dict[str, object]:
    """``options`` with the value of every secret option replaced by ``***``."""
    return {k: "***" if k in SECRET_OPTIONS else v for k, v in options.items()}


def parse_hosts(url: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """The ``host:port`` list of a multi-host URL (``scheme://[user@]h1:1,h2:2/...``).

    Raises:
        ConfigError: No host, an empty entry, or a port that is not 1-65535.
    """
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    hosts: list[tuple[str, int]] = []
    for entry in netloc.split(","):
        host, port = entry, str(default_port)
        if entry.startswith("["):  # [IPv6]:port
            host, _, rest = entry[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else port
        elif entry.count(":") == 1:
            host, _, port = entry.partition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"malformed host {entry!r} in {redact_url(url)!r}: expected 'host:port', "
                "several separated by ',' (e.g. 'h1:7000,h2:7001')"
            )
        hosts.append((host, int(port)))
    return tuple(hosts)


def check_scheme(scheme: object) -> str:
    """Validate a scheme name as RFC 3986 allows it; return it lower-cased."""
    if not isinstance(scheme, str) or not _SCHEME_RE.match(scheme.lower()):
        raise ConfigError(
            f"invalid scheme {scheme!r}: expected letters, digits, '+', '-' or '.', "
            "starting with a letter (e.g. 'etcd')"
        )
    return scheme.lower()


def split_url(url: object) -> tuple[str, dict[str, str]]:
    """Split ``url`` into its scheme and its query options; reject malformed URLs."""
    if not isinstance(url, str):
        raise ConfigError(f"URL must be a str like 'memory://', got {type(url).__name__}")
    if "://" not in url:
        raise ConfigError(
            f"malformed URL {redact_url(url)!r}: expected 'scheme://...', "
            "e.g. 'memory://', 'redis://host:6379/0' or 'postgresql://user@host/db'"
        )
    try:
        parts = urlsplit(url)
        if "," not in parts.netloc:  # several hosts: parse_hosts checks each port
            _ = parts.port  # urlsplit checks the port lazily; force the check before any I/O.
    except ValueError as exc:
        raise ConfigError(f"malformed URL {redact_url(url)!r}: {exc}") from None
    scheme = check_scheme(parts.scheme)
    query: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError(
            f"malformed query in {redact_url(url)!r}: expected 'name=value&name=value'"
        ) from None
    for name, value in pairs:
        if name in query:
            raise ConfigError(f"option {name!r} is given twice in {redact_url(url)!r}")
        query[name] = value
    return scheme, query


def parse_lease_ttl(value: object) -> float:
    """Validate a lease TTL: a finite number of seconds greater than zero."""
    seconds = _number(value, "lease_ttl")
    if not seconds > 0 or math.isinf(seconds):
        raise ConfigError(f"lease_ttl must be a finite number of seconds > 0, got {value!r}")
    return seconds


def parse_namespace(value: object) -> str:
    """Validate a namespace: a non-empty ``str`` of at most 128 UTF-8 bytes."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"namespace must be a non-empty str, got {value!r}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigError("namespace must be valid Unicode (no lone surrogates)") from None
    if size > MAX_NAMESPACE_BYTES:
        raise ConfigError(f"namespace must be at most {MAX_NAMESPACE_BYTES} UTF-8 bytes")
    return value


def parse_timeout(value: object, name: str = "timeout") -> float | None:
    """Validate an optional wait time: None (for ever) or a number of seconds >= 0."""
    if value is None:
        return None
    seconds = _number(value, name)
    if not seconds >= 0:  # also rejects NaN
        raise ConfigError(f"{name} must be None or a number of seconds >= 0, got {value!r}")
    return seconds


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if math.isnan(seconds):
        raise ConfigError(f"{name} must be a number of seconds, got NaN")
    return seconds


def build_settings(
    scheme: str,
    url: str,
    options: Mapping[str, Any],
    accepted: frozenset[str],
    client: object | None,
) -> Settings:
    """Check option names against ``accepted`` and build the frozen settings."""
    unknown = sorted(set(options) - accepted - COMMON_OPTIONS)
    if unknown:
        names = ", ".join(sorted(accepted | COMMON_OPTIONS))
        raise ConfigError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {scheme}://; accepted: {names}"
        )
    rest = {k: v for k, v in options.items() if k not in COMMON_OPTIONS}
    return Settings(
        scheme=scheme,
        url=url,
        namespace=parse_namespace(options.get("namespace", DEFAULT_NAMESPACE)),
        lease_ttl=parse_lease_ttl(options.get("lease_ttl", DEFAULT_LEASE_TTL)),
        options=MappingProxyType(rest),
        client=client,
    )
