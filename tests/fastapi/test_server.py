"""agentlocks.fastapi against a real uvicorn server on loopback, on every backend in the table.

Each test builds its app, serves it with uvicorn on a free port (``serve`` fixture) and talks
to it with httpx. Timestamps are taken in the handlers (same process, monotonic clock).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run
# time, and the endpoints below are defined inside tests whose locals those annotations name.

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import BackgroundTasks, Body, Depends, FastAPI

from agentlocks import Busy, Coordinator, KeyInfo, Lease, ThreadBusy
from agentlocks.fastapi import backpressure, install, readiness, serialized
from tests.fastapi.conftest import Serve

OptionalBody = Annotated[dict[str, int] | None, Body()]

#: Bound for "it did not hang": far above any expected time, below the client's timeout.
NO_HANG = 15.0


def make_app(*, cancel_on_disconnect: bool = True) -> FastAPI:
    """A FastAPI app with agentlocks' handlers installed."""
    app = FastAPI()
    install(app, cancel_on_disconnect=cancel_on_disconnect)
    return app


async def wait_until(coord: Coordinator, check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it is true; fail (not hang) after NO_HANG seconds."""
    deadline = time.monotonic() + NO_HANG
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.005)


async def state(coord: Coordinator, key: str, *, semaphore: bool = False) -> KeyInfo:
    """Shorthand for ``coord.inspect``."""
    return await coord.inspect(key, semaphore=semaphore)


def assert_503(response: httpx.Response, errors: set[str], key: str) -> None:
    """A 503 with a whole-second Retry-After >= 1 and the contract's JSON body."""
    assert response.status_code == 503, response.text
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
    body = response.json()
    assert set(body) == {"error", "detail", "key"}
    assert body["error"] in errors and body["key"] == key and body["detail"]


async def test_one_user_is_serialised_while_users_run_in_parallel(
    coord: Coordinator, serve: Serve
) -> None:
    """Requests of one user never overlap in time; requests of different users do."""
    app = make_app()
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)

    @app.post("/users/{user_id}/ingest")
    @coord.serialized("user:{user_id}")
    async def ingest(user_id: str) -> dict[str, str]:
        start = time.monotonic()
        await asyncio.sleep(0.05)
        spans[user_id].append((start, time.monotonic()))
        return {"user": user_id}

    async with serve(app) as client:
        responses = await asyncio.gather(
            *(client.post(f"/users/{u}/ingest") for _ in range(4) for u in ("a", "b", "c"))
        )
    assert [r.status_code for r in responses] == [200] * 12
    for user, user_spans in spans.items():
        ordered = sorted(user_spans)
        assert len(ordered) == 4
        for (_, end), (start, _) in itertools.pairwise(ordered):
            assert end <= start, f"two requests of {user} overlapped"
    overlaps = [
        (u, v)
        for u in spans
        for v in spans
        if u < v
        for s1, e1 in spans[u]
        for s2, e2 in spans[v]
        if s1 < e2 and s2 < e1
    ]
    assert overlaps, "different users never ran at the same time"


async def test_requests_of_one_user_run_in_arrival_order(coord: Coordinator, serve: Serve) -> None:
    """Requests queued on one user are served FIFO, in the order they reached the backend."""
    app = make_app()
    order: list[int] = []
    gate = asyncio.Event()

    @app.post("/users/{user_id}/ingest")
    @coord.serialized("user:{user_id}")
    async def ingest(user_id: str, seq: int) -> dict[str, int]:
        if seq == 0:
            await gate.wait()
        order.append(seq)
        return {"seq": seq}

    async with serve(app) as client:
        calls = [asyncio.create_task(client.post("/users/u/ingest", params={"seq": 0}))]
        await wait_until(coord, lambda: _held(coord, "user:u"), "the first request holds")
        for seq in range(1, 6):
            calls.append(asyncio.create_task(client.post("/users/u/ingest", params={"seq": seq})))
            await wait_until(coord, lambda n=seq: _waiting(coord, "user:u", n), f"{seq} wait")
        gate.set()
        responses = await asyncio.gather(*calls)
    assert [r.json()["seq"] for r in responses] == list(range(6))
    assert order == list(range(6))


async def _held(coord: Coordinator, key: str, *, semaphore: bool = False) -> bool:
    return (await state(coord, key, semaphore=semaphore)).held


async def _waiting(coord: Coordinator, key: str, n: int, *, semaphore: bool = False) -> bool:
    return (await state(coord, key, semaphore=semaphore)).waiting == n


async def _idle(coord: Coordinator, key: str, *, semaphore: bool = False) -> bool:
    info = await state(coord, key, semaphore=semaphore)
    return not info.held and info.waiting == 0


async def test_a_full_queue_answers_503_with_retry_after_at_once(
    coord: Coordinator, serve: Serve
) -> None:
    """With every slot taken and max_waiting waiting, requests get 503 queue_full at once."""
    app = make_app()
    gate = asyncio.Event()

    @app.post("/ingest")
    @coord.backpressure("ingest", capacity=1, max_waiting=2, timeout=NO_HANG)
    async def ingest() -> dict[str, bool]:
        await gate.wait()
        return {"ok": True}

    async with serve(app) as client:
        admitted = [asyncio.create_task(client.post("/ingest"))]
        await wait_until(coord, lambda: _held(coord, "ingest", semaphore=True), "one holds")
        for n in (1, 2):  # one at a time, so each reaches the backend after the previous
            admitted.append(asyncio.create_task(client.post("/ingest")))
            await wait_until(
                coord, lambda n=n: _waiting(coord, "ingest", n, semaphore=True), f"{n} wait"
            )
        rejected = await asyncio.gather(*(client.post("/ingest") for _ in range(3)))
        for response in rejected:
            assert_503(response, {"queue_full"}, "ingest")
        gate.set()
        served = await asyncio.gather(*admitted)
    assert [r.status_code for r in served] == [200, 200, 200]
    assert await _idle(coord, "ingest", semaphore=True)


async def test_a_timed_out_wait_answers_503_instead_of_hanging(
    coord: Coordinator, serve: Serve
) -> None:
    """A request that cannot get a slot within ``timeout`` gets 503 acquire_timeout."""
    app = make_app()
    gate = asyncio.Event()

    @app.post("/ingest")
    @coord.backpressure("ingest", capacity=1, timeout=0.2)
    async def ingest() -> dict[str, bool]:
        await gate.wait()
        return {"ok": True}

    async with serve(app) as client:
        holder = asyncio.create_task(client.post("/ingest"))
        await wait_until(coord, lambda: _held(coord, "ingest", semaphore=True), "one holds")
        started = time.monotonic()
        response = await client.post("/ingest")
        assert time.monotonic() - started < NO_HANG
        assert_503(response, {"acquire_timeout"}, "ingest")
        assert (await state(coord, "ingest", semaphore=True)).waiting == 0
        gate.set()
        assert (await holder).status_code == 200


async def test_overload_is_shed_with_503_and_no_request_hangs(
    coord: Coordinator, serve: Serve
) -> None:
    """A burst of 5x what fits is answered quickly: 200s, then 503s with Retry-After."""
    app = make_app()
    hold = 0.1

    @app.post("/users/{user_id}/ingest")
    @coord.serialized("user:{user_id}")
    @coord.backpressure("ingest", capacity=2, max_waiting=2, timeout=0.5)
    async def ingest(user_id: str) -> dict[str, str]:
        await asyncio.sleep(hold)
        return {"user": user_id}

    async def timed(user: int) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = await client.post(f"/users/u{user}/ingest")
        return response, time.monotonic() - started

    async with serve(app) as client:
        results = await asyncio.gather(*(timed(n) for n in range(20)))
    statuses = [r.status_code for r, _ in results]
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
    for response, elapsed in results:
        assert elapsed < NO_HANG
        if response.status_code == 503:
            assert_503(response, {"queue_full", "acquire_timeout"}, "ingest")
    assert await _idle(coord, "ingest", semaphore=True)


async def test_a_busy_thread_answers_409(coord: Coordinator, serve: Serve) -> None:
    """ThreadBusy raised by a handler becomes 409 with the contract's body and no Retry-After."""
    app = make_app()

    @app.post("/threads/{thread_id}/runs")
    async def run(thread_id: str) -> dict[str, str]:
        key = f"thread:{thread_id}"
        try:
            lease = await coord.acquire(key, wait=False)
        except Busy as exc:
            raise ThreadBusy(f"thread {thread_id} already has a run", key=key) from exc
        await lease.release()
        return {"thread": thread_id}

    async with serve(app) as client:
        assert (await client.post("/threads/t1/runs")).status_code == 200
        async with coord.acquire("thread:t1"):
            response = await client.post("/threads/t1/runs")
    assert response.status_code == 409
    assert "retry-after" not in response.headers
    assert response.json() == {
        "error": "thread_busy",
        "detail": "thread t1 already has a run",
        "key": "thread:t1",
    }


def _forever_app(coord: Coordinator, form: str, **install_options: Any) -> FastAPI:
    """An app whose handler holds user lock + global slot until cancelled."""
    app = make_app(**install_options)
    if form == "decorators":

        @app.post("/users/{user_id}/ingest")
        @coord.serialized("user:{user_id}")
        @coord.backpressure("ingest", capacity=1, max_waiting=10, timeout=NO_HANG)
        async def ingest(
            user_id: str, payload: Annotated[dict[str, int] | None, Body()] = None
        ) -> None:
            await anyio.sleep_forever()

    else:
        cap = coord.backpressure("ingest", capacity=1, max_waiting=10, timeout=NO_HANG)

        @app.post(
            "/users/{user_id}/ingest",
            dependencies=[Depends(serialized(coord, "user:{user_id}")), Depends(backpressure(cap))],
        )
        async def ingest(
            user_id: str, payload: Annotated[dict[str, int] | None, Body()] = None
        ) -> None:
            await anyio.sleep_forever()

    return app


@pytest.mark.parametrize("form", ["decorators", "dependencies"])
async def test_client_disconnect_frees_waits_and_holds(
    coord: Coordinator, serve: Serve, form: str
) -> None:
    """Clients that hang up while holding or queued leave every key free and every queue empty."""
    app = _forever_app(coord, form)
    async with serve(app) as client:
        # u holds the user lock and the only slot; u's second request waits on user:u (with a
        # body, so the disconnect is watched after the body was read); v waits for the slot.
        calls = [
            asyncio.create_task(client.post("/users/u/ingest")),
            asyncio.create_task(client.post("/users/u/ingest", json={"n": 1})),
        ]
        await wait_until(coord, lambda: _waiting(coord, "user:u", 1), "u's second request waits")
        calls.append(asyncio.create_task(client.post("/users/v/ingest")))
        await wait_until(
            coord, lambda: _waiting(coord, "ingest", 1, semaphore=True), "v waits for a slot"
        )
        for call in calls:
            call.cancel()  # httpx closes the connection: the client is gone
        await asyncio.gather(*calls, return_exceptions=True)

        async def all_free() -> bool:
            return (
                await _idle(coord, "user:u")
                and await _idle(coord, "user:v")
                and await _idle(coord, "ingest", semaphore=True)
            )

        await wait_until(coord, all_free, "every key is free after the clients left")


async def test_without_cancel_on_disconnect_a_departed_client_keeps_its_hold(
    coord: Coordinator, serve: Serve
) -> None:
    """install(cancel_on_disconnect=False) lets handlers run on after their client left."""
    app = make_app(cancel_on_disconnect=False)
    gate = asyncio.Event()

    @app.post("/users/{user_id}/ingest")
    @coord.serialized("user:{user_id}")
    async def ingest(user_id: str) -> None:
        await gate.wait()

    async with serve(app) as client:
        call = asyncio.create_task(client.post("/users/u/ingest"))
        await wait_until(coord, lambda: _held(coord, "user:u"), "the request holds")
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await asyncio.sleep(0.3)
        assert await _held(coord, "user:u")  # nobody cancelled the handler
        gate.set()
        await wait_until(coord, lambda: _idle(coord, "user:u"), "the handler finished")


async def test_dependencies_serialise_per_user_and_yield_the_leases(
    coord: Coordinator, serve: Serve
) -> None:
    """The Depends form holds the user lock, then a slot, and hands both leases over."""
    app = make_app()
    cap = coord.backpressure("ingest", capacity=4, max_waiting=20, timeout=NO_HANG)
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)

    @app.post("/users/{user_id}/ingest")
    async def ingest(
        user_id: str,
        lock: Annotated[Lease, Depends(serialized(coord, "user:{user_id}", timeout=NO_HANG))],
        slot: Annotated[Lease, Depends(backpressure(cap))],
    ) -> dict[str, Any]:
        start = time.monotonic()
        await asyncio.sleep(0.02)
        spans[user_id].append((start, time.monotonic()))
        return {"lock": lock.key, "slot": slot.key, "exclusive": not lock.shared}

    async with serve(app) as client:
        responses = await asyncio.gather(
            *(client.post(f"/users/{u}/ingest") for _ in range(3) for u in ("a", "b"))
        )
    assert {r.status_code for r in responses} == {200}
    assert responses[0].json() == {"lock": "user:a", "slot": "ingest", "exclusive": True}
    for user_spans in spans.values():
        ordered = sorted(user_spans)
        assert all(e <= s for (_, e), (s, _) in itertools.pairwise(ordered))
    assert await _idle(coord, "user:a") and await _idle(coord, "ingest", semaphore=True)


async def test_readiness_is_503_while_a_queue_is_full(coord: Coordinator, serve: Serve) -> None:
    """/ready answers 200 with room in the queue and 503 (with Retry-After) while it is full."""
    app = make_app()
    cap = coord.backpressure("ingest", capacity=1, max_waiting=1, timeout=NO_HANG)
    gate = asyncio.Event()
    app.add_api_route("/ready", readiness(coord, cap))

    @app.post("/ingest")
    @cap
    async def ingest() -> None:
        await gate.wait()

    async with serve(app) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {
            "ready": True,
            "backend": "ok",
            "capacities": {
                "ingest": {
                    "capacity": 1, "holders": 0, "waiting": 0, "max_waiting": 1, "full": False
                }
            },
        }  # fmt: skip
        calls = [asyncio.create_task(client.post("/ingest")) for _ in range(2)]
        await wait_until(coord, lambda: _waiting(coord, "ingest", 1, semaphore=True), "full")
        full = await client.get("/ready")
        assert full.status_code == 503
        assert int(full.headers["retry-after"]) >= 1
        assert full.json()["ready"] is False
        assert full.json()["capacities"]["ingest"]["full"] is True
        gate.set()
        await asyncio.gather(*calls)
        assert (await client.get("/ready")).status_code == 200


async def test_background_tasks_run_after_the_response(coord: Coordinator, serve: Serve) -> None:
    """The end-of-response disconnect is not a departed client: background tasks still run."""
    app = make_app()
    done = asyncio.Event()

    async def after() -> None:
        await asyncio.sleep(0.05)
        done.set()

    @app.get("/users/{user_id}")
    @coord.serialized("user:{user_id}")
    async def fetch(user_id: str, tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(after)
        return {"user": user_id}

    async with serve(app) as client:
        assert (await client.get("/users/u")).json() == {"user": "u"}
        await asyncio.wait_for(done.wait(), NO_HANG)
