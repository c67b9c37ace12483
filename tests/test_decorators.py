"""``coord.serialized`` and ``coord.backpressure``: keys, FIFO, caps, fail-fast, stacking."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from dataclasses import dataclass
from typing import Any

import pytest

import agentlocks
from agentlocks import (
    AcquireTimeout,
    Busy,
    ConfigError,
    Coordinator,
    InvalidKey,
    Lease,
    QueueFull,
    Unavailable,
)
from agentlocks.decorators import Backpressure, Serialized
from tests.support.waiting import until_waiting

#: Bound for "it did not hang": far above any expected time, far below the test timeout.
NO_HANG = 20.0


@pytest.fixture
def memory() -> Coordinator:
    """A memory:// coordinator, for checks that do no I/O or are about Python, not backends."""
    return agentlocks.connect("memory://")


async def settle(coord: Coordinator, key: str, waiting: int, *, semaphore: bool = False) -> None:
    """Wait until ``waiting`` requests are queued on ``key`` (bounded by NO_HANG)."""
    await until_waiting(coord, key, waiting, semaphore=semaphore, timeout=NO_HANG, interval=0.002)


async def assert_idle(coord: Coordinator, key: str, *, semaphore: bool = False) -> None:
    """Assert ``key`` has no holder and no waiter."""
    info = await coord.inspect(key, semaphore=semaphore)
    assert info.holders == () and info.waiting == 0, f"{key!r} is not idle: {info}"


class Gauge:
    """Counts calls running at once, per key, and remembers the peak."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total = 0
        self.peak_total = 0

    async def hold(self, key: str, seconds: float) -> None:
        """Run for ``seconds`` while counted under ``key``."""
        self.running[key] = self.running.get(key, 0) + 1
        self.total += 1
        self.peak[key] = max(self.peak.get(key, 0), self.running[key])
        self.peak_total = max(self.peak_total, self.total)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running[key] -= 1
            self.total -= 1


# -- serialized: keys ------------------------------------------------------------------------


@dataclass
class Req:
    """A request object whose attributes a template reads."""

    user_id: str
    tags: tuple[str, ...] = ()


async def test_keys_come_from_positional_keyword_and_default_arguments(
    memory: Coordinator,
) -> None:
    """The key is formatted from the bound arguments, defaults applied, however passed."""
    keys: list[str] = []

    @memory.serialized("{tenant}:{thread_id}")
    async def run(tenant: str, thread_id: int = 7) -> None:
        info = await memory.inspect(f"{tenant}:{thread_id}")
        assert info.held  # the lock being held proves which key was formatted
        keys.append(f"{tenant}:{thread_id}")

    await run("acme", 1)
    await run(tenant="acme", thread_id=2)
    await run("acme")
    assert keys == ["acme:1", "acme:2", "acme:7"]


async def test_template_reads_attributes_and_items(memory: Coordinator) -> None:
    """``{req.user_id}`` and ``{req.tags[0]}`` read into the argument objects."""

    @memory.serialized("user:{req.user_id}/{req.tags[0]}")
    async def handle(req: Req) -> bool:
        return (await memory.inspect(f"user:{req.user_id}/{req.tags[0]}")).held

    assert await handle(Req("u1", ("a",)))


async def test_a_callable_key_gets_the_same_arguments(memory: Coordinator) -> None:
    """A callable key is called with the call's own arguments and its result is the key."""
    calls: list[tuple[Any, ...]] = []

    def key(user_id: str, *, source: str) -> str:
        calls.append((user_id, source))
        return f"user:{user_id.lower()}"

    @memory.serialized(key)
    async def ingest(user_id: str, *, source: str) -> bool:
        return (await memory.inspect(f"user:{user_id.lower()}")).held

    assert await ingest("ALICE", source="sdk")
    assert calls == [("ALICE", "sdk")]


def test_template_naming_a_missing_parameter_fails_at_decoration(memory: Coordinator) -> None:
    """A template field with no matching parameter is a TypeError naming it, at decoration."""
    decorate = memory.serialized("user:{user}")

    async def ingest(user_id: str) -> None: ...

    with pytest.raises(TypeError, match=r"names user\b.*user_id"):
        decorate(ingest)


@pytest.mark.parametrize("template", ["user:{", "user:{}", "user:{0}", "x:{a.}"])
def test_malformed_or_positional_templates_are_config_errors(
    memory: Coordinator, template: str
) -> None:
    """Unparseable templates and positional fields fail when the decorator is made."""
    with pytest.raises(ConfigError):
        memory.serialized(template)


def test_a_key_that_is_neither_template_nor_callable_is_a_type_error(
    memory: Coordinator,
) -> None:
    """Only a str template or a callable is a key spec."""
    with pytest.raises(TypeError, match="template str or a callable"):
        memory.serialized(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "x" * 1025])
async def test_a_key_that_formats_invalid_raises_before_waiting(
    coord: Coordinator, bad: str
) -> None:
    """An empty or oversized key raises InvalidKey; the function never runs, nothing queues."""
    ran = False

    @coord.serialized("{key}")
    async def work(key: str) -> None:
        nonlocal ran
        ran = True

    with pytest.raises(InvalidKey):
        await work(bad)
    assert not ran


async def test_a_callable_key_returning_a_non_str_raises_invalid_key(memory: Coordinator) -> None:
    """A key callable must return a str; anything else is InvalidKey, before running."""

    @memory.serialized(lambda n: n)
    async def work(n: int) -> None:
        pytest.fail("must not run")

    with pytest.raises(InvalidKey):
        await work(3)


async def test_a_call_not_matching_the_signature_fails_before_waiting(coord: Coordinator) -> None:
    """A bad call raises TypeError at once, even while its key would be held by another."""

    @coord.serialized("user:{user_id}")
    async def work(user_id: str) -> None: ...

    async with coord.acquire("user:u"):
        with pytest.raises(TypeError):
            await asyncio.wait_for(work(), NO_HANG)  # type: ignore[call-arg]
        assert (await coord.inspect("user:u")).waiting == 0


# -- serialized: behaviour -------------------------------------------------------------------


async def test_one_call_at_a_time_per_key_and_keys_in_parallel(coord: Coordinator) -> None:
    """Calls with one key never overlap; calls with different keys do."""
    gauge = Gauge()

    @coord.serialized("user:{user_id}")
    async def ingest(user_id: str) -> None:
        await gauge.hold(user_id, 0.02)

    await asyncio.wait_for(
        asyncio.gather(*(ingest(u) for _ in range(5) for u in ("a", "b", "c"))), NO_HANG
    )
    assert gauge.peak == {"a": 1, "b": 1, "c": 1}
    assert gauge.peak_total > 1
    for user in "abc":
        await assert_idle(coord, f"user:{user}")


async def test_calls_on_one_key_run_in_arrival_order(coord: Coordinator) -> None:
    """Calls queued on one key run FIFO, in the order they reached the backend."""
    order: list[int] = []
    gate = asyncio.Event()

    @coord.serialized("user:{user_id}")
    async def ingest(user_id: str, seq: int) -> None:
        if seq == 0:
            await gate.wait()
        order.append(seq)

    tasks = [asyncio.create_task(ingest("u", 0))]
    await settle(coord, "user:u", 0)
    while not (await coord.inspect("user:u")).held:
        await asyncio.sleep(0.002)
    for seq in range(1, 8):
        tasks.append(asyncio.create_task(ingest("u", seq)))
        await settle(coord, "user:u", seq)
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), NO_HANG)
    assert order == list(range(8))


@pytest.mark.parametrize(
    ("options", "error"),
    [({"wait": False}, Busy), ({"timeout": 0.05}, AcquireTimeout), ({"max_waiting": 0}, QueueFull)],
)
async def test_acquire_options_apply_to_every_call(
    coord: Coordinator, options: dict[str, Any], error: type[Unavailable]
) -> None:
    """wait=False, timeout and max_waiting reach acquire and fail the call with their error."""

    @coord.serialized("user:{user_id}", **options)
    async def ingest(user_id: str) -> None:
        pytest.fail("must not run while the key is held")

    async with coord.acquire("user:u"):
        with pytest.raises(error) as caught:
            await asyncio.wait_for(ingest("u"), NO_HANG)
    assert caught.value.key == "user:u"
    await assert_idle(coord, "user:u")


async def test_shared_option_lets_calls_overlap(coord: Coordinator) -> None:
    """serialized(..., shared=True) takes the key shared: readers run together."""
    gauge = Gauge()

    @coord.serialized("doc:{doc}", shared=True)
    async def read(doc: str) -> None:
        await gauge.hold(doc, 0.05)

    await asyncio.wait_for(asyncio.gather(*(read("d") for _ in range(4))), NO_HANG)
    assert gauge.peak["d"] > 1


@pytest.mark.parametrize(
    "options", [{"timeout": -1}, {"max_waiting": -1}, {"on_lost": "explode"}, {"wait": "no"}]
)
def test_bad_options_fail_when_the_decorator_is_made(
    memory: Coordinator, options: dict[str, Any]
) -> None:
    """Option errors surface at definition time, not on the first request."""
    with pytest.raises(ConfigError):
        memory.serialized("k", **options)


def test_unknown_options_are_type_errors_naming_the_decorator(memory: Coordinator) -> None:
    """An option a decorator does not take is a TypeError, as for a keyword parameter."""
    with pytest.raises(TypeError, match=r"serialized\(\) got an unexpected keyword argument 'ttl'"):
        memory.serialized("k", ttl=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"backpressure\(\) got an unexpected keyword .* 'wait'"):
        memory.backpressure("b", capacity=1, wait=False)  # type: ignore[call-arg]


async def test_options_are_validated_once_not_per_call(
    memory: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decorator builds its request when it is made; calls reuse it, options applied."""
    built: list[object] = []
    real = agentlocks.coordinator.build_request

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(agentlocks.coordinator, "build_request", counting)
    seen: list[bool] = []

    @memory.serialized("user:{user_id}", shared=True, lease_ttl=7)
    async def ingest(user_id: str) -> None:
        info = await memory.inspect(f"user:{user_id}")
        seen.append(info.holders[0].shared)

    for user in ("a", "b", "a"):
        await ingest(user)
    assert len(built) == 1
    assert seen == [True, True, True]


async def test_an_error_in_the_function_releases_the_key(coord: Coordinator) -> None:
    """The function's exception propagates and the key is free afterwards."""

    @coord.serialized("user:{user_id}")
    async def ingest(user_id: str) -> None:
        raise LookupError(user_id)

    with pytest.raises(LookupError):
        await ingest("u")
    await assert_idle(coord, "user:u")


async def test_a_cancelled_waiting_call_leaves_the_queue(coord: Coordinator) -> None:
    """Cancelling a call queued behind a holder leaves no waiter and no holder."""

    @coord.serialized("user:{user_id}")
    async def ingest(user_id: str) -> None:
        pytest.fail("must not run")

    async with coord.acquire("user:u"):
        task = asyncio.create_task(ingest("u"))
        await settle(coord, "user:u", 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await coord.inspect("user:u")).waiting == 0
    await assert_idle(coord, "user:u")


async def test_serialized_refusals_carry_this_keys_drain_time(coord: Coordinator) -> None:
    """After calls held >= 0.1 s, a refused call's retry_after covers holder + queue."""
    hold = 0.1

    @coord.serialized("user:{user_id}", max_waiting=1)
    async def ingest(user_id: str, gate: asyncio.Event | None = None) -> None:
        if gate is None:
            await asyncio.sleep(hold)
        else:
            await gate.wait()

    assert coord.serialized("user:{user_id}").retry_after is None  # nothing measured
    await ingest("u")
    gate = asyncio.Event()
    tasks = [asyncio.create_task(ingest("u", gate))]
    while not (await coord.inspect("user:u")).held:
        await asyncio.sleep(0.002)
    tasks.append(asyncio.create_task(ingest("u", gate)))
    await settle(coord, "user:u", 1)
    with pytest.raises(QueueFull) as caught:
        await asyncio.wait_for(ingest("u", gate), NO_HANG)
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), NO_HANG)
    # One holder and one waiter, each ~hold (every measured hold lasted at least `hold`).
    assert 2 * hold <= caught.value.retry_after < NO_HANG


async def test_methods_can_be_serialized(memory: Coordinator) -> None:
    """A decorated method binds self as usual and the template reads its other arguments."""

    class Service:
        @memory.serialized("user:{user_id}")
        async def ingest(self, user_id: str) -> str:
            return f"{type(self).__name__}:{user_id}"

    assert await Service().ingest("u") == "Service:u"


# -- both decorators: what they accept and keep ----------------------------------------------


def _plain(user_id: str) -> None: ...


def _gen(user_id: str) -> Any:
    yield user_id


async def _agen(user_id: str) -> Any:
    yield user_id


@pytest.mark.parametrize("fn", [_plain, _gen, _agen, lambda user_id: None])
@pytest.mark.parametrize("which", ["serialized", "backpressure"])
def test_only_async_def_functions_are_accepted(memory: Coordinator, which: str, fn: Any) -> None:
    """Plain functions, generators, async generators and lambdas are a clear TypeError."""
    decorator = (
        memory.serialized("user:{user_id}")
        if which == "serialized"
        else memory.backpressure("b", capacity=1)
    )
    with pytest.raises(TypeError, match="only wraps `async def`"):
        decorator(fn)


async def test_async_callables_and_partials_are_accepted(memory: Coordinator) -> None:
    """An object with ``async def __call__`` and a partial of an async function count."""

    class Handler:
        async def __call__(self, user_id: str) -> str:
            return user_id

    async def greet(greeting: str, user_id: str) -> str:
        return f"{greeting} {user_id}"

    assert await memory.serialized("user:{user_id}")(Handler())("u") == "u"
    partial = functools.partial(greet, "hi")
    assert await memory.backpressure("b", capacity=1)(partial)(user_id="u") == "hi u"


@pytest.mark.parametrize("which", ["serialized", "backpressure", "stacked"])
def test_wrapped_functions_keep_signature_name_and_doc(memory: Coordinator, which: str) -> None:
    """Signature (what FastAPI reads), name, docstring and __wrapped__ survive decoration."""

    async def ingest(user_id: str, payload: dict[str, int] | None = None) -> int:
        """Ingest a payload."""
        return 0

    serial = memory.serialized("user:{user_id}")
    cap = memory.backpressure("ingest", capacity=2)
    wrapped = {"serialized": serial, "backpressure": cap, "stacked": lambda f: serial(cap(f))}[
        which
    ](ingest)
    assert inspect.signature(wrapped) == inspect.signature(ingest)
    assert wrapped.__name__ == "ingest" and wrapped.__doc__ == "Ingest a payload."
    assert inspect.iscoroutinefunction(wrapped)
    assert inspect.unwrap(wrapped) is ingest


def test_reprs_show_the_configuration(memory: Coordinator) -> None:
    """Decorator reprs show the key or name and the non-default options."""
    serial = memory.serialized("user:{user_id}", timeout=5)
    assert isinstance(serial, Serialized)
    assert repr(serial) == "Serialized('user:{user_id}', timeout=5)"
    cap = memory.backpressure("ingest", capacity=5, max_waiting=50, timeout=30)
    assert isinstance(cap, Backpressure)
    assert repr(cap) == "Backpressure('ingest', capacity=5, max_waiting=50, timeout=30.0)"
    assert (cap.name, cap.capacity, cap.max_waiting, cap.timeout) == ("ingest", 5, 50, 30.0)


# -- backpressure ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"capacity": 0}, {"capacity": True}, {"capacity": 2, "max_waiting": -1},
     {"capacity": 2, "timeout": float("nan")}],
)  # fmt: skip
def test_bad_backpressure_options_fail_when_the_decorator_is_made(
    memory: Coordinator, kwargs: dict[str, Any]
) -> None:
    """Capacity, max_waiting and timeout are checked at once, not on the first call."""
    with pytest.raises(ConfigError):
        memory.backpressure("b", **kwargs)


def test_a_bad_backpressure_name_is_invalid_key(memory: Coordinator) -> None:
    """The name is a key like any other: empty is InvalidKey."""
    with pytest.raises(InvalidKey):
        memory.backpressure("", capacity=1)


async def test_at_most_capacity_calls_run_at_once(coord: Coordinator) -> None:
    """However many calls arrive, at most ``capacity`` run together, and all finish."""
    gauge = Gauge()

    @coord.backpressure("llm", capacity=3)
    async def complete(n: int) -> int:
        await gauge.hold("llm", 0.01)
        return n

    results = await asyncio.wait_for(asyncio.gather(*(complete(n) for n in range(20))), NO_HANG)
    assert results == list(range(20))
    assert gauge.peak["llm"] == 3
    await assert_idle(coord, "llm", semaphore=True)


async def test_queue_full_is_raised_at_once_with_retry_after(coord: Coordinator) -> None:
    """With every slot taken and max_waiting waiting, a call fails at once with QueueFull."""
    gate = asyncio.Event()

    @coord.backpressure("ingest", capacity=1, max_waiting=2)
    async def ingest(n: int) -> int:
        await gate.wait()
        return n

    tasks = [asyncio.create_task(ingest(0))]
    while not (await coord.inspect("ingest", semaphore=True)).held:
        await asyncio.sleep(0.002)
    for n in (1, 2):  # one at a time: each reaches the backend after the previous
        tasks.append(asyncio.create_task(ingest(n)))
        await settle(coord, "ingest", n, semaphore=True)
    with pytest.raises(QueueFull) as caught:
        await asyncio.wait_for(ingest(3), NO_HANG)
    assert caught.value.key == "ingest"
    assert caught.value.retry_after > 0
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), NO_HANG) == [0, 1, 2]
    await assert_idle(coord, "ingest", semaphore=True)


async def test_acquire_timeout_after_timeout_and_the_wait_leaves_the_queue(
    coord: Coordinator,
) -> None:
    """A call that cannot get a slot within ``timeout`` raises AcquireTimeout, not hangs."""
    gate = asyncio.Event()

    @coord.backpressure("ingest", capacity=1, timeout=0.1)
    async def ingest() -> None:
        await gate.wait()

    # The holder takes the slot without the 0.1 s timeout (a loaded machine can take longer
    # than that for a first grant); the same semaphore the decorator uses.
    holder = asyncio.create_task(_hold(coord.semaphore("ingest", 1, timeout=NO_HANG), gate))
    while not (await coord.inspect("ingest", semaphore=True)).held:
        assert not holder.done(), holder
        await asyncio.sleep(0.002)
    started = time.monotonic()
    with pytest.raises(AcquireTimeout) as caught:
        await asyncio.wait_for(ingest(), NO_HANG)
    waited = time.monotonic() - started
    assert 0.09 <= waited < 2.0, waited  # it waited its timeout (0.1 s), then gave up
    assert isinstance(caught.value, Unavailable) and caught.value.retry_after > 0
    assert (await coord.inspect("ingest", semaphore=True)).waiting == 0
    gate.set()
    await holder
    await assert_idle(coord, "ingest", semaphore=True)


async def test_retry_after_is_estimated_from_measured_hold_times(coord: Coordinator) -> None:
    """After calls held ~0.1 s, QueueFull.retry_after is the backlog's drain time, not 1 s."""
    hold = 0.1

    @coord.backpressure("ingest", capacity=2, max_waiting=2, timeout=NO_HANG)
    async def ingest(gate: asyncio.Event | None = None) -> None:
        if gate is None:
            await asyncio.sleep(hold)
        else:
            await gate.wait()

    assert coord.backpressure("ingest", capacity=2).retry_after is None  # nothing measured
    for _ in range(2):  # four measured holds, two at a time (within capacity: none waits)
        await asyncio.wait_for(asyncio.gather(ingest(), ingest()), NO_HANG)
    gate = asyncio.Event()
    tasks = [asyncio.create_task(ingest(gate)) for _ in range(2)]
    while len((await coord.inspect("ingest", semaphore=True)).holders) < 2:
        await asyncio.sleep(0.002)
    for n in (1, 2):  # one at a time: each reaches the backend after the previous
        tasks.append(asyncio.create_task(ingest(gate)))
        await settle(coord, "ingest", n, semaphore=True)
    with pytest.raises(QueueFull) as caught:
        await asyncio.wait_for(ingest(gate), NO_HANG)
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), NO_HANG)
    # Every measured hold lasted at least `hold` (sleeps never end early), so the estimate is
    # at least the drain time of 2 running + 2 queued calls, 2 at a time: 2 * hold.
    assert 2 * hold <= caught.value.retry_after < NO_HANG


async def test_an_error_in_the_function_frees_the_slot(coord: Coordinator) -> None:
    """The function's exception propagates and its slot is released."""

    @coord.backpressure("ingest", capacity=1)
    async def ingest() -> None:
        raise LookupError

    with pytest.raises(LookupError):
        await ingest()
    await assert_idle(coord, "ingest", semaphore=True)


async def test_an_unavailable_from_the_body_keeps_its_own_retry_after(
    memory: Coordinator,
) -> None:
    """Only a refusal of the slot itself gets the capacity's estimate."""
    cap = memory.backpressure("ingest", capacity=1)

    @cap
    async def ingest() -> None:
        raise QueueFull("inner", key="other", retry_after=123.0)

    for _ in range(3):
        with pytest.raises(QueueFull) as caught:
            await ingest()
        assert caught.value.retry_after == 123.0


async def test_slot_context_manager_holds_one_slot(coord: Coordinator) -> None:
    """``async with limiter.slot()`` holds a slot for the block and yields its lease."""
    cap = coord.backpressure("ingest", capacity=2)
    async with cap.slot() as lease:
        assert lease.key == "ingest" and lease.shared
        assert len((await coord.inspect("ingest", semaphore=True)).holders) == 1
    await assert_idle(coord, "ingest", semaphore=True)


# -- stacking --------------------------------------------------------------------------------


async def test_a_flooding_user_holds_no_global_slot_while_queued(coord: Coordinator) -> None:
    """One user's 50 queued calls wait on that user's key; another user gets the next slot."""
    hold = 0.05
    first_done = asyncio.Event()
    started: list[str] = []

    @coord.serialized("user:{user_id}")
    @coord.backpressure("ingest", capacity=1, max_waiting=5, timeout=NO_HANG)
    async def ingest(user_id: str, seq: int) -> None:
        started.append(f"{user_id}{seq}")
        if seq == 0 and user_id == "a":
            await first_done.wait()  # a0 holds the only slot until the test lets it go
        else:
            await asyncio.sleep(hold)

    flood = [asyncio.create_task(ingest("a", n)) for n in range(50)]
    await settle(coord, "user:a", 49)
    async with asyncio.timeout(NO_HANG):
        while not started or not (await coord.inspect("ingest", semaphore=True)).held:
            await asyncio.sleep(0.002)  # a0 has user:a; its slot request may be in flight
    # User a's backlog waits on user:a: it holds no slot and takes no place in the global
    # queue (in the opposite order, 49 requests would wait there and max_waiting=5 would
    # already have rejected 44 of them).
    info = await coord.inspect("ingest", semaphore=True)
    assert len(info.holders) == 1 and info.waiting == 0, info
    b = asyncio.create_task(ingest("b", 0))
    await settle(coord, "ingest", 1, semaphore=True)
    released = time.monotonic()
    first_done.set()
    await asyncio.wait_for(b, NO_HANG)
    # b got the slot as soon as a0's hold ended (FIFO on the slot), before any more of a's
    # backlog ran: one hold time, not fifty.
    assert started[:2] == ["a0", "b0"], started[:4]
    finished = time.monotonic() - released
    assert finished < 10 * hold, finished  # b's own hold plus a hand-off, not a's backlog
    for task in flood:
        task.cancel()
    await asyncio.gather(*flood, return_exceptions=True)
    await assert_idle(coord, "user:a")
    await assert_idle(coord, "ingest", semaphore=True)


async def _hold(lease: Lease, gate: asyncio.Event) -> None:
    """Hold ``lease`` until ``gate`` is set."""
    async with lease:
        await gate.wait()
