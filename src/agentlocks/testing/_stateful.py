"""Hypothesis-generated schedules checked against a reference model of the queue.

Random interleavings of acquire (exclusive or shared), release, cancel, ``wait=False`` and
``timeout=0`` on two keys. After every step the backend must agree with the model: the
same requests granted (exclusion and FIFO grant order, shared batching, writers not
starved), the same number waiting, tokens growing in grant order; at the end nothing is
held or queued.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import agentlocks
from agentlocks import Lease

from ._harness import SuiteHarness

KEYS = ("alpha", "beta")
SETTLE_SECONDS = 5.0


@dataclass
class _Request:
    ident: int
    key: str
    shared: bool
    task: asyncio.Task[Lease]


@dataclass
class _KeyModel:
    """The reference: holders and FIFO queue of one key, by request id."""

    holders: dict[int, bool] = field(default_factory=dict)  # id -> shared
    queue: deque[tuple[int, bool]] = field(default_factory=deque)

    def compatible(self, shared: bool) -> bool:
        if not self.holders:
            return True
        return shared and all(self.holders.values())

    def grant_head(self) -> list[int]:
        granted = []
        while self.queue and self.compatible(self.queue[0][1]):
            ident, shared = self.queue.popleft()
            self.holders[ident] = shared
            granted.append(ident)
        return granted


async def _settled(*tasks: asyncio.Task[Lease]) -> None:
    """Wait for ``tasks`` to finish, whatever their outcome (inside the machine's loop)."""
    await asyncio.gather(*tasks, return_exceptions=True)


class _ScheduleMachine(RuleBasedStateMachine):
    url = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.coord = agentlocks.connect(self.url, namespace=f"stateful-{id(self):x}")
        self.model = {key: _KeyModel() for key in KEYS}
        self.requests: dict[int, _Request] = {}
        self.leases: dict[int, Lease] = {}
        self.last_token: dict[str, int] = {}
        self.next_id = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, SETTLE_SECONDS))

    # -- rules ---------------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), shared=st.booleans())
    def request(self, key: str, shared: bool) -> None:
        ident, self.next_id = self.next_id, self.next_id + 1

        async def start() -> asyncio.Task[Lease]:
            async def take() -> Lease:
                return await self.coord.acquire(key, shared=shared)

            return asyncio.create_task(take())

        task = self.run(start())
        self.requests[ident] = _Request(ident, key, shared, task)
        model = self.model[key]
        model.queue.append((ident, shared))
        model.grant_head()
        self.settle(key)

    @rule(key=st.sampled_from(KEYS), shared=st.booleans(), use_timeout=st.booleans())
    def try_now(self, key: str, shared: bool, use_timeout: bool) -> None:
        model = self.model[key]
        expected = not model.queue and model.compatible(shared)
        options: dict[str, Any] = {"timeout": 0} if use_timeout else {"wait": False}
        failure = agentlocks.AcquireTimeout if use_timeout else agentlocks.Busy

        async def attempt() -> Lease | None:
            try:
                return await self.coord.acquire(key, shared=shared, **options)
            except failure:
                return None

        lease = self.run(attempt())
        assert (lease is not None) == expected, f"try_now granted={lease}, model={expected}"
        if lease is not None:
            ident, self.next_id = self.next_id, self.next_id + 1
            model.holders[ident] = shared
            self.leases[ident] = lease
            self.check_token(key, lease)
        self.settle(key)

    @precondition(lambda self: self.held_ids())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        ident = data.draw(st.sampled_from(sorted(self.held_ids())))
        lease = self.leases.pop(ident)
        self.run(lease.release())
        model = self.model[lease.key]
        del model.holders[ident]
        model.grant_head()
        self.settle(lease.key)

    @precondition(lambda self: self.queued_ids())
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ident = data.draw(st.sampled_from(sorted(self.queued_ids())))
        request = self.requests.pop(ident)
        request.task.cancel()
        self.run(_settled(request.task))
        model = self.model[request.key]
        model.queue.remove((ident, request.shared))
        model.grant_head()
        self.settle(request.key)

    # -- checking ------------------------------------------------------------------------------

    def held_ids(self) -> list[int]:
        return list(self.leases)

    def queued_ids(self) -> list[int]:
        return [ident for model in self.model.values() for ident, _ in model.queue]

    def check_token(self, key: str, lease: Lease) -> None:
        assert lease.token > self.last_token.get(key, 0), "token did not grow"
        self.last_token[key] = lease.token

    def settle(self, key: str) -> None:
        """Wait until every request the model granted has its lease, then compare."""
        model = self.model[key]
        due = sorted(
            (r for r in self.requests.values() if r.key == key and r.ident in model.holders),
            key=lambda r: r.ident,
        )

        async def collect() -> None:
            for request in due:
                lease = await request.task
                del self.requests[request.ident]
                self.leases[request.ident] = lease
                self.check_token(key, lease)
            while (await self.coord.inspect(key)).waiting != len(model.queue):
                await asyncio.sleep(0.001)

        self.run(collect())
        early = [r.ident for r in self.requests.values() if r.key == key and r.task.done()]
        assert not early, f"requests {early} finished though the model still queues them"

    @invariant()
    def holders_match_the_model(self) -> None:
        for key, model in self.model.items():
            info = self.run(self.coord.inspect(key))
            assert len(info.holders) == len(model.holders), (key, info, model)
            assert sorted(h.shared for h in info.holders) == sorted(model.holders.values())

    def teardown(self) -> None:
        try:
            for ident in list(self.leases):
                self.run(self.leases.pop(ident).release())
            for request in self.requests.values():
                request.task.cancel()
            self.run(_settled(*(r.task for r in self.requests.values())))
            for key in KEYS:
                late = [r for r in self.requests.values() if r.key == key and r.task.done()]
                for request in late:  # granted while being cancelled: must be handed on
                    if not request.task.cancelled() and request.task.exception() is None:
                        self.run(request.task.result().release())
                info = self.run(self.coord.inspect(key))
                assert info.holders == () and info.waiting == 0, f"left behind: {info}"
        finally:
            self.run(self.coord.aclose())
            self.loop.close()


class StatefulSchedules(SuiteHarness):
    """Random schedules against the reference model."""

    def test_random_schedules_match_the_reference_model(self, backend_url: str) -> None:
        """Random acquire/release/cancel/try schedules keep exclusion, FIFO and tokens."""
        machine = type("Schedule", (_ScheduleMachine,), {"url": backend_url})
        remote = not backend_url.startswith("memory:")
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=25 if remote else 100,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
            ),
        )
