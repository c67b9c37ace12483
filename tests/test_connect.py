"""connect(): URL parsing, options, schemes, drivers, secrets — all before any I/O."""

from __future__ import annotations

import importlib.util

import pytest

import agentlocks
from agentlocks import ConfigError
from agentlocks._url import Settings, redact_url


def test_default_url_is_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a URL or $AGENTLOCKS_URL, connect() uses memory:// and the default namespace."""
    monkeypatch.delenv("AGENTLOCKS_URL", raising=False)
    coord = agentlocks.connect()
    assert repr(coord) == "Coordinator(url='memory://', namespace='agentlocks')"
    assert coord.lease_ttl == 30.0


def test_environment_url_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """$AGENTLOCKS_URL is the default URL."""
    monkeypatch.setenv("AGENTLOCKS_URL", "memory://?namespace=fromenv")
    assert agentlocks.connect().namespace == "fromenv"


def test_query_options_and_keywords_agree() -> None:
    """URL query parameters set the same options as keywords; keywords win."""
    coord = agentlocks.connect("memory://?namespace=billing&lease_ttl=10")
    assert (coord.namespace, coord.lease_ttl) == ("billing", 10.0)
    coord = agentlocks.connect("memory://?namespace=billing", namespace="other", lease_ttl=5)
    assert (coord.namespace, coord.lease_ttl) == ("other", 5.0)


def test_scheme_is_case_insensitive() -> None:
    """MEMORY:// is memory://."""
    assert agentlocks.connect("MEMORY://").namespace == "agentlocks"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nope://x", "unknown URL scheme 'nope'; accepted: "),
        ("localhost:6379", "expected 'scheme://"),
        ("redis//localhost", "expected 'scheme://"),
        ("memory://?namespace", "malformed query"),
        ("memory://?namespace=a&namespace=b", "given twice"),
        ("memory://?colour=blue", "unknown option(s) 'colour' for memory://; accepted: lease_ttl"),
        ("memory://?lease_ttl=0", "lease_ttl must be a finite number of seconds > 0"),
        ("memory://?lease_ttl=-3", "lease_ttl must be a finite number of seconds > 0"),
        ("memory://?lease_ttl=nan", "got NaN"),
        ("memory://?lease_ttl=inf", "finite"),
        ("memory://?lease_ttl=soon", "must be a number of seconds"),
        ("memory://?namespace=", "namespace must be a non-empty str"),
        ("memory://host:notaport", "malformed URL"),
        ("1bad://x", "invalid scheme"),
    ],
)
def test_bad_urls_raise_config_error(url: str, message: str) -> None:
    """Each malformed URL or option raises ConfigError naming what is accepted."""
    with pytest.raises(ConfigError) as caught:
        agentlocks.connect(url)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_unknown_scheme_lists_the_accepted_ones() -> None:
    """The error for an unknown scheme names every built-in scheme."""
    with pytest.raises(ConfigError) as caught:
        agentlocks.connect("nope://x")
    for scheme in ("memory", "postgres", "postgresql", "redis", "rediss"):
        assert f" {scheme}," in f"{caught.value}," or f" {scheme} " in str(caught.value)


def test_non_string_url_is_rejected() -> None:
    """A URL that is not a str raises ConfigError."""
    with pytest.raises(ConfigError, match="must be a str"):
        agentlocks.connect(b"memory://")  # type: ignore[arg-type]


def test_long_namespace_is_rejected() -> None:
    """Namespaces are limited to 128 UTF-8 bytes."""
    with pytest.raises(ConfigError, match="at most 128"):
        agentlocks.connect(namespace="n" * 129)


def test_unknown_keyword_option_is_rejected() -> None:
    """An unknown keyword option raises ConfigError listing the accepted ones."""
    with pytest.raises(ConfigError, match="accepted: lease_ttl, namespace"):
        agentlocks.connect("memory://", pool_size=3)


def test_client_and_url_must_agree() -> None:
    """redis= with a postgresql:// URL, or both clients at once, is a ConfigError."""
    with pytest.raises(ConfigError, match="redis= was given but the URL scheme is 'memory'"):
        agentlocks.connect("memory://", redis=object())
    with pytest.raises(ConfigError, match="at most one"):
        agentlocks.connect(redis=object(), postgres=object())


@pytest.mark.parametrize(
    ("url", "extra", "driver"),
    [
        ("redis://localhost:6379/0", "redis", "redis"),
        ("rediss://localhost:6379/0", "redis", "redis"),
        ("postgresql://app@db/app", "postgres", "asyncpg"),
        ("postgres://app@db/app", "postgres", "asyncpg"),
    ],
)
def test_server_schemes_need_their_driver(
    url: str, extra: str, driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the driver installed, a server URL names the pip extra to install."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == driver else real_find_spec(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match=rf"pip install 'agentlocks\[{extra}\]'"):
        agentlocks.connect(url)


def test_password_is_redacted_everywhere() -> None:
    """The password appears in no repr and no error message."""
    assert redact_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("redis://:s3cret@host") == "redis://:***@host"
    assert redact_url("memory://") == "memory://"
    settings = Settings(scheme="redis", url="redis://u:s3cret@h/0")
    assert "s3cret" not in repr(settings)
    with pytest.raises(ConfigError) as caught:
        agentlocks.connect("nope://u:s3cret@h/0")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        agentlocks.connect("memory://u:s3cret@h:99999")
    assert "s3cret" not in str(caught.value)


def test_registered_scheme_is_used() -> None:
    """register_backend adds a scheme; its class is imported on first use."""
    agentlocks.register_backend("mem2", "agentlocks.backends.memory:MemoryBackend", replace=True)
    assert agentlocks.connect("mem2://").backend.leases_expire is False


def test_register_backend_validates_and_protects_builtins() -> None:
    """Bad schemes and targets are rejected; built-ins need replace=True."""
    with pytest.raises(ConfigError, match="already registered"):
        agentlocks.register_backend("memory", "x.y:Z")
    with pytest.raises(ConfigError, match=r"'package\.module:ClassName'"):
        agentlocks.register_backend("etcd", "no_colon_here")
    with pytest.raises(ConfigError, match="invalid scheme"):
        agentlocks.register_backend("bad scheme", "x.y:Z")


def test_unimportable_registered_backend_is_a_config_error() -> None:
    """A scheme whose module or class is missing raises ConfigError on connect."""
    agentlocks.register_backend("ghost", "no_such_pkg.mod:Backend", replace=True)
    with pytest.raises(ConfigError, match="cannot import the ghost:// backend"):
        agentlocks.connect("ghost://")
    agentlocks.register_backend("ghost2", "agentlocks.backends.memory:Nope", replace=True)
    with pytest.raises(ConfigError, match="does not name a class"):
        agentlocks.connect("ghost2://")


def test_entry_point_backends_are_discovered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheme advertised in the agentlocks.backends entry-point group can be connected."""
    from importlib.metadata import EntryPoint

    from agentlocks import _registry

    point = EntryPoint(
        name="viaep", value="agentlocks.backends.memory:MemoryBackend", group="agentlocks.backends"
    )
    monkeypatch.setattr(_registry, "_entry_points_loaded", False)
    monkeypatch.setattr(_registry, "entry_points", lambda group: [point])
    monkeypatch.setattr(_registry, "_registered", {})
    assert "viaep" in _registry.known_schemes()
    assert agentlocks.connect("viaep://").namespace == "agentlocks"
