"""The pipeline settles every delivery exactly once, whatever arrives and whatever fails."""

import asyncio
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus import ConsumerFailed, Envelope, Event, EventBus, RetryPolicy
from eventbus.pipeline import Pipeline
from eventbus.protocol import Delivery
from eventbus.routing import matches
from eventbus.testing.conformance import until
from eventbus.wire import from_amqp, from_kafka_headers

ROOT = Path(__file__).resolve().parents[2]


class Order(Event, stream="orders", type="order.created"):
    order_id: str
    total: int = 0


class Recorder(Delivery):
    """A delivery that records how it was settled; `fail_stores` makes the first N
    dead-letter or delayed-retry stores raise."""

    __slots__ = ("fail_stores", "outcomes")

    def __init__(self, fail_stores: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outcomes: list[str] = []
        self.fail_stores = fail_stores

    async def ack(self) -> None:
        self.outcomes.append("ack")

    async def nack(self) -> None:
        self.outcomes.append("nack")

    async def _store(self, what: str) -> None:
        if self.fail_stores:
            self.fail_stores -= 1
            raise ConnectionError("dead-letter destination unavailable")
        self.outcomes.append(what)

    async def retry_later(self, attempt: int, delay: float) -> None:
        await self._store("retry_later")

    async def dead_letter(self, info: dict[str, str]) -> None:
        await self._store("dead_letter")


def pipeline(bus: EventBus, types: dict[str, type[Event]] | None, handler: Any = None) -> Pipeline:
    async def noop(event: Any, ctx: Any) -> None:
        pass

    return Pipeline(
        bus,
        group="g",
        patterns=("#",),
        types=types,
        handler=handler or noop,
        wants_context=True,
        is_async=True,
        retry=RetryPolicy(attempts=1),
        middleware=[],
        max_message_bytes=1 << 20,
        stopping=asyncio.Event(),
    )


headers = st.lists(
    st.tuples(
        st.one_of(st.text(max_size=12), st.just("ce_type"), st.just("ce_id")),
        st.one_of(st.binary(max_size=24), st.none()),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        st.binary(max_size=256),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=4), inner, max_size=4)
            ),
        ).map(lambda v: json.dumps(v).encode()),
        st.integers(1, 50_000).map(lambda n: b"[" * n + b"]" * n),
    ),
    raw=headers,
    key=st.one_of(st.none(), st.binary(max_size=16)),
    typed=st.booleans(),
)
def test_decoding_anything_settles_once_and_never_raises(
    body: bytes, raw: list[tuple[str, bytes | None]], key: bytes | None, typed: bool
) -> None:
    """Random bytes and headers through both bindings' decoders and the pipeline."""
    defects: list[str] = []
    attributes, attempt = from_kafka_headers(raw, key, defects)
    amqp_attributes, _ = from_amqp(
        {name: value for name, value in raw}, None, None, None, defects=[]
    )
    assert isinstance(amqp_attributes, dict)
    attributes.setdefault("id", "x")
    bus = EventBus("memory://fuzz")
    d = Recorder(
        stream="orders",
        body=body,
        attributes=attributes,
        attempt=attempt,
        defect="; ".join(defects) or None,
    )
    asyncio.run(pipeline(bus, {"order.created": Order} if typed else None).process(d))
    assert len(d.outcomes) == 1, d.outcomes
    assert d.outcomes[0] in ("ack", "dead_letter")


async def test_a_dead_letter_that_cannot_be_stored_is_retried_and_reported() -> None:
    bus = EventBus("memory://unit-store")
    health: list[bool] = []

    async def fail(event: Any, ctx: Any) -> None:
        health.append(bus.health().ok)
        raise RuntimeError("handler failed")

    d = Recorder(
        fail_stores=3,
        stream="orders",
        body=b'{"order_id": "o"}',
        attributes={"id": "e-1", "type": "order.created"},
    )
    p = pipeline(bus, {"order.created": Order}, fail)
    async with bus:
        task = asyncio.create_task(p.process(d))
        await until(lambda: bool(bus.health().problems) or task.done(), what="a problem")
        problems = bus.health().problems
        await task
        assert bus.health().ok, bus.health()
    assert list(problems) == ["orders/g: dead letter"]
    assert "dead-letter destination unavailable" in next(iter(problems.values()))
    assert d.outcomes == ["dead_letter"]


async def test_a_store_still_failing_at_stop_gives_the_delivery_back() -> None:
    bus = EventBus("memory://unit-store-stop")

    async def fail(event: Any, ctx: Any) -> None:
        raise RuntimeError("handler failed")

    d = Recorder(
        fail_stores=1_000_000,
        stream="orders",
        body=b'{"order_id": "o"}',
        attributes={"id": "e-1", "type": "order.created"},
    )
    p = pipeline(bus, {"order.created": Order}, fail)
    task = asyncio.create_task(p.process(d))
    await until(lambda: bool(bus.health().problems), what="a problem")
    p.stopping.set()
    await asyncio.wait_for(task, 10)
    assert d.outcomes == ["nack"]


async def test_a_dead_consumer_fails_the_bus_loudly() -> None:
    """A consumer task that dies is never left half-alive: the bus logs it, reports it,
    stops every subscription, and `run()` raises `ConsumerFailed`."""
    bus = EventBus("memory://unit-death", freeze_heap=False)  # not the test runner's heap

    @bus.subscribe("orders", group="g")
    async def handle(envelope: Envelope) -> None:
        pass

    runner = asyncio.create_task(bus.run(stop_signals=()))
    await until(lambda: bus.running, what="the bus to start")
    consumer: Any = bus._consumers[0]  # the memory consumer's task, killed from outside
    consumer._member.task.cancel()
    with pytest.raises(ConsumerFailed, match="orders/g"):
        await asyncio.wait_for(runner, 10)
    health = bus.health()
    assert not health.ok and not health.running
    assert health.failure is not None and "orders/g" in health.failure


def test_type_caches_stay_small_whatever_types_producers_send() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(1000):
            matches("order.#", f"order.{n:05d}." + "x" * 60_000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 2_000_000, f"pattern matching kept {grown} bytes of event types"


async def test_a_typed_handlers_envelope_is_made_from_the_delivery_once() -> None:
    seen: list[Any] = []

    async def handle(event: Order, ctx: Any) -> None:
        seen.append((event, ctx.envelope, ctx.envelope, ctx.attempt))

    attributes = {"id": "e-1", "type": "order.created", "source": "s", "partitionkey": "k"}
    body = Order(order_id="o-1", total=3).model_dump_json().encode()
    d = Recorder(stream="orders", body=body, attributes=attributes, key="k", attempt=2)
    assert await pipeline(EventBus("memory://"), {"order.created": Order}, handle).process(d)
    (event, first, again, attempt) = seen[0]
    assert event == Order(order_id="o-1", total=3) and d.outcomes == ["ack"]
    assert first is again  # read twice, made once
    assert (first.id, first.type, first.stream, first.key, first.attempt) == (
        "e-1", "order.created", "orders", "k", 2
    )  # fmt: skip
    assert first.body == body and first.source == "s" and attempt == 2
