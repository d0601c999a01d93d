"""Telemetry pieces on memory://: the OpenTelemetry metrics bridge, the traced sync face,
bounded labels and the histogram. (Traces and metrics on every broker: the conformance
suite's telemetry section.)"""

import asyncio
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from eventbus import Context, Event, EventBus, RetryPolicy, SyncPublisher
from eventbus.metrics import BUCKETS, MAX_TYPES, Histogram, TypeLabels
from eventbus.observer import make_tracing
from eventbus.testing.conformance import unique, until
from eventbus.testing.conformance.telemetry import Spans

# no `from __future__ import annotations`: handlers are annotated with per-test classes


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


async def test_metrics_reach_an_opentelemetry_meter_provider() -> None:
    stream = unique("otel")

    class Order(Event, stream=stream, type="order.placed"):
        order_id: str

    reader = InMemoryMetricReader()
    bus = EventBus(f"memory://{stream}", meter_provider=MeterProvider(metric_readers=[reader]))
    handled: list[str] = []

    @bus.subscribe(group="billing", retry=RetryPolicy(attempts=1))
    async def bill(order: Order) -> None:
        if order.order_id == "poison":
            raise ValueError("declined")
        handled.append(order.order_id)

    async with bus:
        for order_id in ("a", "b", "poison"):
            await bus.publish(Order(order_id=order_id))
        await until(lambda: len(handled) == 2)
        metrics = bus.metrics
        assert metrics is not None
        await until(lambda: len(metrics.failed) == 1, what="the dead letter counted")
        points = _points(reader)
    where = {
        "messaging.system": "memory",
        "messaging.destination.name": stream,
        "messaging.consumer.group.name": "billing",
        "cloudevents.event_type": "order.placed",
    }
    [handled_point] = points["eventbus.handled"]
    assert (dict(handled_point.attributes), handled_point.value) == (where, 2)
    [failed_point] = points["eventbus.failed"]
    assert dict(failed_point.attributes) == {**where, "eventbus.outcome": "dead_lettered"}
    assert failed_point.value == 1
    [duration] = points["eventbus.handler.duration"]
    assert duration.count == 3 and dict(duration.attributes) == where
    [published] = points["eventbus.published"]
    assert published.value == 3
    [attached] = points["eventbus.subscription.attached"]
    assert attached.value == 1
    assert [p.value for p in points["eventbus.broker.connected"]] == [1]


async def test_deliveries_waiting_behind_their_key_are_reported() -> None:
    """`waiting`: in `bus.health()`, on /metrics and in OpenTelemetry. A handler that hangs
    shows there (its key's later events pile up) long before the subscription stops."""
    from prometheus_client import generate_latest

    from eventbus.prometheus import registry_of

    stream = unique("waiting")

    class Order(Event, stream=stream, type="order.placed"):
        order_id: str

    reader = InMemoryMetricReader()
    bus = EventBus(f"memory://{stream}", meter_provider=MeterProvider(metric_readers=[reader]))
    release = asyncio.Event()
    started: list[str] = []

    @bus.subscribe(group="billing", concurrency=2)
    async def bill(order: Order) -> None:
        started.append(order.order_id)
        await release.wait()

    def sub() -> Any:
        [subscription] = bus.health().subscriptions
        return subscription

    async with bus:
        for n in range(5):
            await bus.publish(Order(order_id=f"held-{n}"), key="held")
        await bus.publish(Order(order_id="other"), key="other")
        await until(
            lambda: sub().in_flight == 2 and sub().waiting == 4,
            what="two running (one per key), four behind the held key",
        )
        assert sorted(started) == ["held-0", "other"]
        text = generate_latest(registry_of(bus)).decode()
        assert f'eventbus_handlers_waiting{{group="billing",stream="{stream}"}} 4.0' in text
        [point] = _points(reader)["eventbus.handlers.waiting"]
        assert point.value == 4
        release.set()
        await until(lambda: len(started) == 6 and sub().waiting == 0 and sub().in_flight == 0)


async def test_the_sync_face_traces_its_publishes() -> None:
    stream = unique("sync")

    class Order(Event, stream=stream, type="order.placed"):
        order_id: str

    spans = Spans()
    url = f"memory://{stream}"
    bus = EventBus(url, tracer_provider=spans.provider)
    seen: list[str] = []

    @bus.subscribe(group="billing")
    async def bill(order: Order, ctx: Context) -> None:
        seen.append(ctx.envelope.extensions.get("traceparent", ""))

    async with bus:
        with SyncPublisher(url, tracer_provider=spans.provider) as publisher:
            await asyncio.to_thread(publisher.publish, Order(order_id="o-1"))
            await asyncio.to_thread(
                publisher.publish_many, [Order(order_id="o-2"), Order(order_id="o-3")]
            )
        await until(lambda: len(seen) == 3, what="the three orders")
        processed = await spans.wait(f"process {stream}", 3)
    published = spans.named(f"publish {stream}")
    assert len(published) == 2
    ids = {s.context.span_id for s in published}
    assert {s.parent.span_id for s in processed} <= ids
    batch = next(s for s in published if "messaging.batch.message_count" in s.attributes)
    assert batch.attributes["messaging.batch.message_count"] == 2
    assert batch.attributes["messaging.system"] == "memory"


def test_tracing_is_off_without_a_provider_or_when_turned_off() -> None:
    spans = Spans()
    assert make_tracing(None, None, "memory") is None  # no global provider configured here
    assert make_tracing(False, spans.provider, "memory") is None
    assert make_tracing(None, spans.provider, "memory") is not None


def test_type_labels_are_bounded() -> None:
    declared = TypeLabels(frozenset({"order.placed"}))
    assert declared("order.placed") == "order.placed"
    assert declared("order.forged") == "other"
    assert declared(None) == "none"
    untyped = TypeLabels(None)
    names = [untyped(f"t{n}") for n in range(MAX_TYPES + 10)]
    assert names[:MAX_TYPES] == [f"t{n}" for n in range(MAX_TYPES)]
    assert set(names[MAX_TYPES:]) == {"other"}
    assert untyped("t0") == "t0"  # a type seen before keeps its label
    assert untyped("x" * 201) == "other"


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram()
    for value in (0.0001, 0.003, 0.003, 99.0):
        histogram.observe(value)
    cumulative = dict(histogram.cumulative())
    assert cumulative[BUCKETS[0]] == 1
    assert cumulative[0.005] == 3
    assert cumulative[BUCKETS[-1]] == 3
    assert cumulative[float("inf")] == 4 == histogram.count
    assert abs(histogram.sum - 99.0061) < 1e-9
