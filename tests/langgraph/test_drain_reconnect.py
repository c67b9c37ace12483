"""A drain request whose push is lost (the subscription dropped) still reaches the run."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

import agentlocks
from agentlocks.backends.redis import RedisBackend
from agentlocks.backends.redis._signals import SIGNALS, signal_keys
from agentlocks.langgraph._drain import DrainSignals, thread_key
from tests.conftest import backend_url_for

from ._drain_support import Cancels, Control


@pytest.mark.redis
async def test_redis_signal_published_while_subscription_is_down_is_read_on_reconnect() -> None:
    """Kill the watcher's pub/sub link and signal in one pipeline: the re-read drains the run."""
    never = Cancels()
    url = backend_url_for("redis")
    namespace = f"drain-{uuid.uuid4().hex[:12]}"
    raw = aioredis.Redis.from_url(url, decode_responses=True)
    async with agentlocks.connect(url, namespace=namespace) as a:
        backend = a.backend
        assert isinstance(backend, RedisBackend)
        control = Control()
        async with (
            a.acquire(thread_key("r1")) as lease,
            DrainSignals(a).watch("r1", control, never, lease=lease),
        ):
            name = backend.client_name + ":inbox"
            ids = [c["id"] for c in await raw.client_list() if c["name"] == name]
            assert len(ids) == 1
            # One pipeline: the server publishes right after the kill, before the watcher
            # can have subscribed again, so the pushed message is certainly lost.
            keys = signal_keys(namespace, "l:" + thread_key("r1"))
            tag = keys[0].decode().split("{")[1].split("}")[0]
            channel = backend._signals._channel
            pipe = raw.pipeline(transaction=False)
            pipe.execute_command("CLIENT", "KILL", "ID", ids[0])
            pipe.eval(SIGNALS.text, len(keys), *keys, "send", "drain", 60000, "", channel, tag)
            await pipe.execute()
            await asyncio.wait_for(control.drained.wait(), 5)
    await raw.aclose()
    assert never.calls == 0


@pytest.mark.postgres
async def test_postgres_signal_notified_while_listen_is_down_is_read_on_reconnect() -> None:
    """Terminate the watcher's LISTEN session, then signal: the re-read after it is back drains."""
    never = Cancels()
    url = backend_url_for("postgresql")
    namespace = f"drain-{uuid.uuid4().hex[:12]}"
    app = f"drain-{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(url)
    async with (
        agentlocks.connect(url, namespace=namespace, application_name=app) as a,
        agentlocks.connect(url, namespace=namespace) as b,
    ):
        control = Control()
        async with (
            a.acquire(thread_key("p1")) as lease,
            DrainSignals(a).watch("p1", control, never, lease=lease),
        ):
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1 AND query LIKE 'LISTEN%'",
                app,
            )
            assert killed == 1
            await DrainSignals(b).request_drain("p1")
            await asyncio.wait_for(control.drained.wait(), 5)
    await admin.close()
    assert never.calls == 0
