"""OpenTelemetry metrics (SDK in-memory reader) and structured log lines."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

import agentlocks
from agentlocks import observability

SCRIPT = textwrap.dedent(
    """
    import asyncio, json
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    import agentlocks
    from tests.support.lossy_backend import LossyBackend

    agentlocks.register_backend("lossy", "tests.support.lossy_backend:LossyBackend")

    async def main():
        coord = agentlocks.connect("lossy://?namespace=telemetry")
        holder = await coord.acquire("user:secret-id")
        try:
            await coord.acquire("user:secret-id", timeout=0.01)
        except agentlocks.AcquireTimeout:
            pass
        try:
            await coord.acquire("user:secret-id", wait=False)
        except agentlocks.Busy:
            pass
        slot = await coord.semaphore("s", 1, wait=False)  # immediate: no wait recorded
        waiter = asyncio.create_task(coord.semaphore("s", 1).__aenter__())
        pending = asyncio.create_task(coord.acquire("user:secret-id").__aenter__())
        await asyncio.sleep(0.01)
        pending.cancel()  # cancelled while it waits
        await asyncio.wait([pending])
        await holder.release()
        lease = await coord.acquire("lost", lease_ttl=60)
        coord.backend.revoke(lease._grant, notify=True)
        waiter.cancel()  # never granted; a slot still held at aclose() would count as lost
        await asyncio.wait([waiter])
        await slot.release()
        await coord.aclose()

    asyncio.run(main())
    points = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    value = getattr(p, "value", None)
                    if value is None:
                        value = p.count
                    points.setdefault(metric.name, []).append([dict(p.attributes), value])
                points.setdefault("units", {})[metric.name] = metric.unit
    print(json.dumps(points))
    """
)


@pytest.fixture(scope="module")
def points() -> dict[str, list[list[object]]]:
    """The data points one scripted run on lossy:// leaves in the SDK's in-memory reader."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, list[list[object]]] = json.loads(out.stdout)
    return result


def _by_result(points: dict[str, list[list[object]]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for attrs, value in points["agentlocks.lease.requests"]:
        assert isinstance(attrs, dict) and isinstance(value, int)
        name = attrs["agentlocks.lease.result"]
        counts[name] = counts.get(name, 0) + value
    return counts


def test_requests_are_counted_by_result(points: dict[str, list[list[object]]]) -> None:
    """Acquired, timeout, rejected, cancelled and lost requests each reach their counter."""
    counts = _by_result(points)
    assert counts["timeout"] == 1 and counts["rejected"] == 1
    assert counts["lost"] == 1 and counts["cancelled"] == 2  # the lock waiter and the slot's
    assert counts["acquired"] == 3  # the holder, the wait=False slot and the lease lost later
    waits = [
        v
        for a, v in points["agentlocks.lease.wait_time"]
        if a["agentlocks.lease.result"] == "acquired"
    ]
    assert sum(waits) == 2  # the wait=False grant could not wait


def test_metrics_carry_backend_and_namespace_never_keys(
    points: dict[str, list[list[object]]],
) -> None:
    """Every point has backend, namespace and kind attributes, and no key anywhere."""
    assert "secret-id" not in json.dumps(points)
    for name in ("agentlocks.lease.requests", "agentlocks.lease.wait_time"):
        for attrs, _ in points[name]:
            assert isinstance(attrs, dict)
            assert attrs["agentlocks.backend"] == "lossy"
            assert attrs["agentlocks.namespace"] == "telemetry"
            assert attrs["agentlocks.kind"] in ("lock", "semaphore")
    errors = {a["error.type"] for a, _ in points["agentlocks.lease.requests"] if "error.type" in a}
    assert errors == {"AcquireTimeout", "Busy", "LeaseLost"}


def test_durations_are_histograms_in_seconds(points: dict[str, list[list[object]]]) -> None:
    """Wait and hold times are histograms in seconds; pending requests an up-down counter."""
    units = points["units"]
    assert isinstance(units, dict)
    assert units["agentlocks.lease.wait_time"] == "s" and units["agentlocks.lease.duration"] == "s"
    assert units["agentlocks.lease.pending_requests"] == "{request}"
    pending = sum(int(v) for _, v in points["agentlocks.lease.pending_requests"])
    assert pending == 0  # every waiter that started waiting stopped
    assert sum(int(v) for _, v in points["agentlocks.lease.duration"]) >= 1


@pytest.fixture
def hashed() -> Iterator[None]:
    """Hash keys in log lines for one test."""
    observability.configure(hash_keys=True)
    yield
    observability.configure(hash_keys=False)


async def test_refusals_are_logged_at_debug_with_extra_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused request leaves a DEBUG line whose extra fields name key, reason and wait."""
    coord = agentlocks.connect("memory://?namespace=logs")
    caplog.set_level(logging.DEBUG, logger="agentlocks")
    async with coord.acquire("k"):
        with pytest.raises(agentlocks.AcquireTimeout):
            await coord.acquire("k", timeout=0.01)
    record = next(r for r in caplog.records if "refused (acquire_timeout)" in r.getMessage())
    assert record.agentlocks_key == "k" and record.agentlocks_reason == "acquire_timeout"
    assert record.agentlocks_namespace == "logs" and record.agentlocks_waited >= 0.01


async def test_long_waits_are_logged_with_hashed_keys(
    caplog: pytest.LogCaptureFixture, hashed: None
) -> None:
    """A wait past slow_wait logs INFO `acquire waited long`; hash_keys hides the key."""
    observability.configure(slow_wait=0.02)
    try:
        coord = agentlocks.connect()
        caplog.set_level(logging.INFO, logger="agentlocks")
        holder = await coord.acquire("user:42")
        waiter = asyncio.create_task(coord.acquire("user:42", timeout=5).__aenter__())
        await asyncio.sleep(0.05)
        await holder.release()
        lease = await waiter
        await lease.release()
    finally:
        observability.configure(slow_wait=1.0)
    record = next(r for r in caplog.records if "acquire waited long" in r.getMessage())
    assert record.agentlocks_key == observability.shown_key("user:42")
    assert "user:42" not in record.getMessage() and record.agentlocks_waited >= 0.04
    assert record.agentlocks_token == lease.token


def test_configure_rejects_bad_values() -> None:
    """configure() refuses negative waits and fractions outside (0, 1]."""
    with pytest.raises(ValueError, match="slow_wait"):
        observability.configure(slow_wait=-1)
    with pytest.raises(ValueError, match="late_renewal"):
        observability.configure(late_renewal=2)


async def test_a_late_renewal_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A renewal confirmed over half a TTL after the last one logs `lease renewed late`."""
    agentlocks.register_backend("lossy", "tests.support.lossy_backend:LossyBackend", replace=True)
    caplog.set_level(logging.WARNING, logger="agentlocks")
    async with agentlocks.connect("lossy://?namespace=late-renewal") as coord:
        lease = await coord.acquire("job:1", lease_ttl=1.0)
        # Blocking on purpose: the loop stalls past the renewal due at a third of the TTL.
        time.sleep(0.6)  # noqa: ASYNC251
        await asyncio.sleep(0.1)  # the renewer runs now, late but within the lease
        assert not lease.lost
        await lease.release()
    record = next(r for r in caplog.records if "lease renewed late" in r.getMessage())
    assert record.agentlocks_key == "job:1" and record.agentlocks_token == lease.token
    assert 0.5 <= record.agentlocks_late < 0.9 and record.agentlocks_lease_ttl == 1.0
