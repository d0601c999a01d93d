"""Batch handlers: what `subscribe` accepts and refuses, `BatchContext`, and a stop in the
middle of batches (the broker-facing behaviour is in the conformance suite,
`eventbus.testing.conformance.batches`, run on every adapter).

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
from typing import Any

import pytest

from eventbus import (
    BatchContext,
    Context,
    Envelope,
    Event,
    EventBus,
    RetryPolicy,
    SubscriptionError,
)
from eventbus.testing.conformance import unique, until
from eventbus.types import HandleMiddleware, HandleNext


def events_on(stream: str) -> type[Event]:
    class Tick(Event, stream=stream, type="tick"):
        n: int

    return Tick


def passing_through(seen: list[str], per_item: bool) -> list[HandleMiddleware]:
    """With `per_item`, a handle middleware that notes each event id in `seen` and passes
    it on (it puts each item of a batch on a task of its own); else no middleware."""

    async def passing(ctx: Context, call_next: HandleNext) -> None:
        seen.append(ctx.envelope.id)
        await call_next(ctx)

    return [passing] if per_item else []


async def next_member_gets(broker: str, tick: type[Event], expected: int) -> list[int]:
    """The events the next member of group `g` handles (batches of 10): `expected` of
    them, and nothing more within 0.2 s."""
    rest: list[int] = []
    again = EventBus(broker)

    @again.subscribe(group="g", batch_size=10)
    async def later(events: list[tick]) -> None:  # type: ignore[valid-type]
        rest.extend(e.n for e in events)  # type: ignore[attr-defined]

    async with again:
        await until(lambda: len(rest) >= expected, what="the events given back")
        await asyncio.sleep(0.2)  # (nothing more may come: each event once)
    return rest


def test_batch_options_belong_to_batch_handlers() -> None:
    Tick = events_on(unique())
    bus = EventBus("memory://")

    async def one(event: Tick) -> None:  # type: ignore[valid-type]
        pass

    with pytest.raises(SubscriptionError, match="batch_size and batch_timeout are for batch"):
        bus.subscribe(group="g", batch_size=10)(one)

    async def many(events: list[Tick]) -> None:  # type: ignore[valid-type]
        pass

    with pytest.raises(SubscriptionError, match="one batch at a time"):
        bus.subscribe(group="g", concurrency=4)(many)
    with pytest.raises(SubscriptionError, match="exactly_once does not take batch"):
        bus.subscribe(group="g", exactly_once=True)(many)
    for size in (0, -1, 2.5, True, "10"):
        with pytest.raises(SubscriptionError, match="batch_size must be"):
            bus.subscribe(group="g", batch_size=size)(many)
    for timeout in (0, -1.0, "1", False):
        with pytest.raises(SubscriptionError, match="batch_timeout must be"):
            bus.subscribe(group="g", batch_timeout=timeout)(many)
    with pytest.raises(SubscriptionError, match="responder answers one request"):
        bus.responder(group="r")(many)
    sub = bus.add_handler(many, group="g", batch_size=7, batch_timeout=0.5)
    assert (sub.batch_size, sub.batch_timeout, sub.stream) == (7, 0.5, Tick.__stream__)
    assert "batch_size" not in sub.options, "never passed on to the adapter"
    assert len(bus.subscriptions) == 1


def test_untyped_batch_handlers_name_their_stream() -> None:
    bus = EventBus("memory://")

    async def raw(envelopes: list[Envelope], ctx: BatchContext) -> None:
        pass

    with pytest.raises(SubscriptionError, match="needs a stream"):
        bus.subscribe(group="g")(raw)
    sub = bus.add_handler(raw, "orders", "order.#", group="g")
    assert sub.batch_size == 100 and sub.types is None and sub.patterns == ("order.#",)

    async def bare(envelopes: list) -> None:  # type: ignore[type-arg]
        pass

    assert bus.add_handler(bare, "orders", group="h").batch_size == 100


async def test_batch_context_names_items_by_index_event_or_context() -> None:
    stream = unique()
    Tick = events_on(stream)
    seen: list[BatchContext] = []
    bus = EventBus(f"memory://{unique()}")

    @bus.subscribe(group="g", batch_size=3, batch_timeout=5.0)
    async def many(events: list[Tick], ctx: BatchContext) -> None:  # type: ignore[valid-type]
        seen.append(ctx)
        assert ctx.index(events[1]) == 1 and ctx.index(ctx.contexts[2]) == 2
        assert ctx.index(ctx.envelopes[0]) == 0 and ctx.index(2) == 2
        assert isinstance(ctx.contexts[0], Context) and ctx.group == "g"
        with pytest.raises(IndexError):
            ctx.index(3)
        with pytest.raises(ValueError, match="not in this batch"):
            ctx.index(Tick(n=99))

    async with bus:
        await bus.publish_many([Tick(n=i) for i in range(3)])
        await until(lambda: len(seen) == 1, what="one batch of three")
    assert [e.n for e in seen[0].events] == [0, 1, 2]  # type: ignore[union-attr]


async def test_the_events_collected_for_the_next_batch_are_reported_as_waiting() -> None:
    stream = unique()
    Tick = events_on(stream)
    handled: list[int] = []
    bus = EventBus(f"memory://{unique()}")

    @bus.subscribe(group="g", batch_size=10, batch_timeout=60.0)
    async def many(events: list[Tick]) -> None:  # type: ignore[valid-type]
        handled.extend(e.n for e in events)  # type: ignore[attr-defined]

    async with bus:
        await bus.publish_many([Tick(n=i) for i in range(3)])
        await until(lambda: bus.health().subscriptions[0].waiting == 3, what="three collected")
        [sub] = bus.health().subscriptions
        assert sub.in_flight == 0 and not handled
        await bus.publish_many([Tick(n=i) for i in range(3, 10)])  # the batch is full
        await until(lambda: handled == list(range(10)), what="one batch of ten")
        [sub] = bus.health().subscriptions
        assert sub.waiting == 0


async def test_a_stop_lets_the_running_batch_finish_and_gives_the_rest_back() -> None:
    """The batch running when the stop begins finishes; what was collected or not yet
    delivered goes back to the broker, and the next member gets exactly the rest."""
    stream, broker = unique(), f"memory://{unique()}"
    Tick = events_on(stream)
    first: list[int] = []
    release = asyncio.Event()
    holding = asyncio.Event()
    bus = EventBus(broker)

    @bus.subscribe(group="g", batch_size=10)
    async def hold(events: list[Tick]) -> None:  # type: ignore[valid-type]
        holding.set()
        await release.wait()
        first.extend(e.n for e in events)  # type: ignore[attr-defined]

    async with bus:
        await bus.publish_many([Tick(n=i) for i in range(30)])
        await holding.wait()
        stopping = asyncio.ensure_future(bus.stop())
        await asyncio.sleep(0)
        release.set()
        await stopping
    done = len(first)
    assert done >= 10 and done % 10 == 0, "the running batch (and any begun) finished whole"
    assert first == list(range(done))

    rest = await next_member_gets(broker, Tick, 30 - done)
    assert sorted(rest) == list(range(done, 30)), "nothing lost, nothing twice"


def test_batch_handler_signature_is_checked_like_any_handler() -> None:
    bus = EventBus("memory://")

    async def three(events: list[Any], ctx: BatchContext, extra: int) -> None:
        pass

    with pytest.raises(SubscriptionError, match="must take"):
        bus.subscribe("s", group="g")(three)


@pytest.mark.parametrize("per_item", [False, True], ids=["inline", "per-item"])
async def test_a_batch_cut_off_by_the_shutdown_timeout_goes_back_whole(per_item: bool) -> None:
    """A batch handler still running when `shutdown_timeout` ends is cancelled: every
    item of its batch goes back to the broker (none acked), and the next member gets
    them all, once."""
    stream, broker = unique(), f"memory://{unique()}"
    Tick = events_on(stream)
    holding = asyncio.Event()
    seen: list[str] = []
    bus = EventBus(broker, shutdown_timeout=0.2, middleware=passing_through(seen, per_item))

    @bus.subscribe(group="g", batch_size=5)
    async def stuck(events: list[Tick]) -> None:  # type: ignore[valid-type]
        holding.set()
        await asyncio.Event().wait()

    async with bus:
        await bus.publish_many([Tick(n=i) for i in range(5)])
        await holding.wait()
    assert len(set(seen)) == (5 if per_item else 0)

    rest = await next_member_gets(broker, Tick, 5)
    assert sorted(rest) == list(range(5)), "each item given back once"


@pytest.mark.parametrize("per_item", [False, True], ids=["inline", "per-item"])
async def test_the_failed_items_of_a_batch_are_retried_side_by_side(per_item: bool) -> None:
    """Each failed item waits out its own backoff and retry, beside the others: the retries
    of a batch of five are all in flight at once (one after the other, a batch of 500
    would take 500 backoffs)."""
    stream, broker = unique(), f"memory://{unique()}"
    Tick = events_on(stream)
    retrying: set[int] = set()
    all_in = asyncio.Event()
    handled: list[int] = []

    bus = EventBus(broker, middleware=passing_through([], per_item))

    @bus.subscribe(group="g", batch_size=5, retry=RetryPolicy(attempts=2, backoff=0.01))
    async def handle(events: list[Tick], ctx: BatchContext) -> None:  # type: ignore[valid-type]
        if ctx.contexts[0].attempt == 1:
            raise ValueError("the whole batch failed")
        [event] = events
        retrying.add(event.n)  # type: ignore[attr-defined]
        if len(retrying) == 5:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 30)  # one at a time, this would time out
        handled.append(event.n)  # type: ignore[attr-defined]

    async with bus:
        await bus.publish_many([Tick(n=i) for i in range(5)])
        await until(lambda: len(handled) == 5, what="the five retries")
    assert sorted(handled) == list(range(5))
