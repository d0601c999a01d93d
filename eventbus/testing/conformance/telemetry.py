"""Telemetry, on every broker: traces that follow an event through handlers, metrics that
count what happened, a health report that says what is attached.

Uses the OpenTelemetry SDK's in-memory exporter (`pip install opentelemetry-sdk`); the
section is skipped, saying so, where the SDK is not installed.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
from typing import Any

import pytest

from eventbus import Context, Reject, RetryPolicy

from .fixture import UsesHarness
from .harness import Harness, unique
from .support import make_events, until, wait_dead

FAST = RetryPolicy(attempts=3, backoff=0.01, multiplier=1.0)


class Spans:
    """A tracer provider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        sdk_trace = pytest.importorskip(
            "opentelemetry.sdk.trace", reason="the telemetry section needs opentelemetry-sdk"
        )
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        self.exporter = InMemorySpanExporter()
        self.provider = sdk_trace.TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def finished(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[Any]:
        return [s for s in self.finished() if s.name == name]

    async def wait(self, name: str, count: int) -> list[Any]:
        await until(lambda: len(self.named(name)) >= count, what=f"{count} {name!r} span(s)")
        return self.named(name)


def _parent(span: Any) -> int | None:
    return span.parent.span_id if span.parent is not None else None


class TelemetryTests(UsesHarness):
    """Tracing, metrics and health (see `AdapterTests`)."""

    async def test_a_chain_of_handlers_is_one_trace(self, harness: Harness) -> None:
        spans = Spans()
        ev = make_events(unique())
        capabilities = harness.capabilities
        bus = harness.bus(tracer_provider=spans.provider)
        shipped: list[str] = []

        @bus.subscribe(group="billing")
        async def bill(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            await ctx.publish(ev.Shipped(order_id=event.order_id), key=event.order_id)

        @bus.subscribe(group="shipping")
        async def ship(event: ev.Shipped, ctx: Context) -> None:  # type: ignore[name-defined]
            shipped.append(ctx.envelope.extensions.get("traceparent", ""))

        async with bus:
            sent = await bus.publish(ev.Created(order_id="o-1"), key="o-1")
            await until(lambda: len(shipped) == 1, what="the chained event")
            processed = await spans.wait(f"process {ev.stream}", 2)
        published = spans.named(f"publish {ev.stream}")
        assert len(published) == 2, [s.name for s in spans.finished()]
        first, second = sorted(published, key=lambda s: s.start_time)
        by_group = {s.attributes["messaging.consumer.group.name"]: s for s in processed}
        bill_span, ship_span = by_group["billing"], by_group["shipping"]

        trace_ids = {s.context.trace_id for s in (first, second, bill_span, ship_span)}
        assert len(trace_ids) == 1, "publish -> handler -> ctx.publish -> handler is one trace"
        assert first.parent is None
        assert _parent(bill_span) == first.context.span_id
        assert _parent(second) == bill_span.context.span_id
        assert _parent(ship_span) == second.context.span_id
        assert f"{second.context.span_id:016x}" in shipped[0]  # the carried traceparent

        from opentelemetry.trace import SpanKind, StatusCode

        assert first.kind is SpanKind.PRODUCER and bill_span.kind is SpanKind.CONSUMER
        assert first.attributes["messaging.system"] == capabilities.system
        assert first.attributes["messaging.destination.name"] == ev.stream
        assert first.attributes["messaging.operation.type"] == "send"
        assert first.attributes["messaging.message.id"] == sent.id
        assert first.attributes["messaging.message.body.size"] > 0
        attrs = bill_span.attributes
        assert attrs["messaging.system"] == capabilities.system
        assert attrs["messaging.operation.type"] == "process"
        assert attrs["messaging.destination.name"] == ev.stream
        assert attrs["messaging.message.id"] == sent.id
        assert attrs["messaging.message.body.size"] > 0
        assert attrs["cloudevents.event_type"] == "order.created"
        assert attrs["eventbus.outcome"] == "handled"
        if capabilities.records_offsets:
            assert "messaging.destination.partition.id" in attrs
            assert attrs["messaging.kafka.offset"] >= 0
        if capabilities.records_routing_keys:
            assert attrs["messaging.rabbitmq.destination.routing_key"] == "order.created"
        assert bill_span.status.status_code is StatusCode.UNSET

    async def test_failed_attempts_are_recorded_and_the_dead_letter_keeps_the_trace(
        self, harness: Harness
    ) -> None:
        spans = Spans()
        ev = make_events(unique())
        bus = harness.bus(tracer_provider=spans.provider)

        @bus.subscribe(group="billing", retry=FAST)
        async def bill(event: ev.Created) -> None:  # type: ignore[name-defined]
            raise ValueError(f"card declined for {event.order_id}")

        async with bus:
            await bus.publish(ev.Created(order_id="o-2"), key="o-2")
            [dead] = await wait_dead(bus, ev.stream, "billing", 1)
            processed = await spans.wait(f"process {ev.stream}", 1)
        [published] = spans.named(f"publish {ev.stream}")
        trace_id = f"{published.context.trace_id:032x}"
        assert trace_id in dead.attributes.get("traceparent", ""), dead.attributes
        failures = [
            event
            for span in processed
            for event in span.events
            if event.name == "exception"
            and event.attributes["exception.type"].endswith("ValueError")
        ]
        assert len(failures) == FAST.attempts, "every failed attempt is recorded"
        assert all(span.context.trace_id == published.context.trace_id for span in processed)
        last = max(processed, key=lambda s: s.end_time)
        from opentelemetry.trace import StatusCode

        assert last.status.status_code is StatusCode.ERROR
        assert last.attributes["eventbus.outcome"] == "dead_lettered"

    async def test_an_event_without_traceparent_starts_a_new_trace(self, harness: Harness) -> None:
        spans = Spans()
        ev = make_events(unique())
        bus = harness.bus(tracer_provider=spans.provider)
        got: list[str] = []

        @bus.subscribe(group="audit")
        async def audit(event: ev.Created) -> None:  # type: ignore[name-defined]
            got.append(event.order_id)

        async with bus:
            await harness.inject_raw(ev.stream, "order.created", b'{"order_id": "foreign"}')
            await bus.publish(ev.Created(order_id="ours"))
            await until(lambda: sorted(got) == ["foreign", "ours"], what="both events")
            processed = await spans.wait(f"process {ev.stream}", 2)
        [published] = spans.named(f"publish {ev.stream}")
        [foreign] = [s for s in processed if s.parent is None]
        [ours] = [s for s in processed if s.parent is not None]
        assert ours.context.trace_id == published.context.trace_id
        assert foreign.context.trace_id != published.context.trace_id

    async def test_without_a_tracer_provider_nothing_is_traced(self, harness: Harness) -> None:
        ev = make_events(unique())
        bus = harness.bus(tracing=False)
        carried: list[dict[str, str]] = []

        @bus.subscribe(group="audit")
        async def audit(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            carried.append(dict(ctx.envelope.extensions))

        async with bus:
            await bus.publish(ev.Created(order_id="o-3"))
            await until(lambda: len(carried) == 1, what="the event")
        assert "traceparent" not in carried[0]

    async def test_metrics_count_what_happened(self, harness: Harness) -> None:
        ev = make_events(unique())
        bus = harness.bus(metrics=True)
        handled: list[str] = []

        @bus.subscribe(group="billing", retry=FAST)
        async def bill(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            if event.order_id == "reject":
                raise Reject("not ours")
            if event.order_id == "flaky" and ctx.attempt == 1:
                raise ValueError("try again")
            handled.append(event.order_id)

        async with bus:
            for order_id in ("a", "b", "flaky", "reject"):
                await bus.publish(ev.Created(order_id=order_id), key=order_id)
            await harness.inject_raw(ev.stream, "order.created", b"{not json", "bad")
            await wait_dead(bus, ev.stream, "billing", 2)
            await until(lambda: len(handled) == 3, what="the good events")
            metrics = bus.metrics
            assert metrics is not None
            labels = (ev.stream, "order.created", "billing")
            await until(
                lambda: (
                    metrics.failed.get((*labels, "bad_input")) == 1
                    and metrics.failed.get((*labels, "rejected")) == 1
                    and metrics.handled.get(labels) == 3
                ),
                what="the counts",
            )
            assert metrics.published[(ev.stream, "order.created")] == 4
            assert metrics.failed[(*labels, "retried")] == 1
            assert metrics.handler_duration[labels].count == 5
            assert sum(h.count for h in metrics.publish_duration.values()) == 4
            health = bus.health()
            assert health.ok, health.reasons()
            [sub] = health.subscriptions
            assert (sub.stream, sub.group, sub.attached) == (ev.stream, "billing", True)
            assert sub.last_handled is not None and health.last_published is not None

    async def test_health_reports_the_backlog_where_the_broker_tells(
        self, harness: Harness
    ) -> None:
        ev = make_events(unique())
        bus = harness.bus(backlog_interval=0.2)
        release = asyncio.Event()
        started: list[str] = []

        @bus.subscribe(group="billing")
        async def bill(event: ev.Created) -> None:  # type: ignore[name-defined]
            started.append(event.order_id)
            await release.wait()

        async with bus:
            if not hasattr(bus._consumers[0], "backlog"):
                pytest.skip("this adapter does not report a backlog")
            await bus.publish_many(
                [(ev.Created(order_id=f"o{n}"), "k") for n in range(5)]  # one key: one at a time
            )
            await until(lambda: len(started) == 1, what="the first event in the handler")

            def waiting() -> int | None:
                backlog = bus.health().subscriptions[0].backlog
                return None if backlog is None else sum(backlog.values())

            # what "waiting" means is the broker's (Kafka lag counts unacknowledged records,
            # RabbitMQ counts ready messages): each adapter's own tests pin the figures
            await until(lambda: waiting() is not None, what="a backlog figure")
            release.set()
            await until(lambda: len(started) == 5, what="all events")
            await until(lambda: waiting() == 0, what="an empty backlog")
