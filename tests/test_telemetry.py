"""OpenTelemetry metrics and log lines, recorded on the slow paths."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest

import agentlocks

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
        holder = await coord.acquire("k")
        try:
            await coord.acquire("k", timeout=0.01)
        except agentlocks.AcquireTimeout:
            pass
        try:
            await coord.acquire("k", wait=False)
        except agentlocks.Busy:
            pass
        slot = await coord.semaphore("s", 1, wait=False)  # immediate: no wait recorded
        waiter = asyncio.create_task(coord.semaphore("s", 1).__aenter__())
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
    print(json.dumps(points))
    """
)


def test_metrics_are_recorded_when_an_sdk_is_configured() -> None:
    """Waits, holds, rejections by reason and lost leases reach the OTel meter."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    points = json.loads(out.stdout)
    rejected = {p[0]["reason"]: p[1] for p in points["agentlocks.acquire.rejected"]}
    assert rejected == {"acquire_timeout": 1, "busy": 1}
    assert sum(p[1] for p in points["agentlocks.lease.lost"]) == 1
    assert sum(p[1] for p in points["agentlocks.acquire.wait"]) >= 2  # two granted requests
    assert sum(p[1] for p in points["agentlocks.lease.hold"]) >= 1
    assert {p[0]["kind"] for p in points["agentlocks.acquire.wait"]} == {"lock"}


async def test_refusals_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """A refused request leaves a DEBUG line on the agentlocks logger."""
    coord = agentlocks.connect()
    caplog.set_level(logging.DEBUG, logger="agentlocks")
    async with coord.acquire("k"):
        with pytest.raises(agentlocks.AcquireTimeout):
            await coord.acquire("k", timeout=0.01)
    assert any("refused (acquire_timeout)" in r.getMessage() for r in caplog.records)
