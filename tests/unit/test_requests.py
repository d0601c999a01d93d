"""Request/reply in the kernel, on memory://: what the conformance suite does not pin on
every broker (its edges: misuse, stray and duplicate replies, responders that cannot
reply, stopping while a request waits, the metrics exporters)."""

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from eventbus import (
    BusClosed,
    ConfigurationError,
    Context,
    DecodeError,
    Event,
    EventBus,
    Message,
    RequestFailed,
    RequestTimeout,
)
from eventbus.prometheus import exposition, registry_of
from eventbus.protocol import Reply
from eventbus.requests import ERROR_TYPE, Requester
from eventbus.testing.conformance import unique, until, wait_dead
from eventbus.types import PublishNext

# no `from __future__ import annotations`: handlers are annotated with per-test classes


def _query(stream: str) -> type[Event]:
    class GetOrder(Event, stream=stream, type="order.get"):
        order_id: str

    return GetOrder


def _bus(stream: str, **options: Any) -> EventBus:
    return EventBus(f"memory://{stream}", **options)


def _requester(bus: EventBus) -> Requester:
    requester = bus._requester
    assert requester is not None, "made by the first request"
    return requester


async def test_requests_need_a_running_bus_and_a_positive_timeout() -> None:
    stream = unique("rr")
    GetOrder = _query(stream)
    bus = _bus(stream)
    with pytest.raises(BusClosed):
        await bus.request(GetOrder(order_id="o"), timeout=1)
    async with bus:
        with pytest.raises(ValueError, match="timeout"):
            await bus.request(GetOrder(order_id="o"), timeout=0)


async def test_a_broker_without_request_reply_says_so() -> None:
    stream = unique("rr")
    GetOrder = _query(stream)
    bus = _bus(stream)
    broker = bus.broker
    broker.capabilities = dataclasses.replace(broker.capabilities, request_reply=False)
    async with bus:
        with pytest.raises(ConfigurationError, match="offers no request/reply"):
            await bus.request(GetOrder(order_id="o"), timeout=1)


def test_responder_errors_must_be_exception_classes() -> None:
    stream = unique("rr")
    GetOrder = _query(stream)
    bus = _bus(stream)

    with pytest.raises(TypeError, match="exception classes"):

        @bus.responder(group="api", errors=("NotFound",))  # type: ignore[arg-type]
        async def get(query: GetOrder) -> None:  # type: ignore[valid-type]
            pass


async def test_stray_and_duplicate_replies_are_dropped_and_counted() -> None:
    stream = unique("rr")
    GetOrder = _query(stream)
    bus = _bus(stream, metrics=True)

    @bus.responder(group="api")
    async def get(query: GetOrder, ctx: Context) -> str:  # type: ignore[valid-type]
        return ctx.envelope.id

    async with bus:
        request_id = await bus.request(GetOrder(order_id="o"), timeout=5)
        requester = _requester(bus)
        requester.receive(Reply({"inreplyto": request_id, "type": "eventbus.reply"}, b'"again"'))
        requester.receive(Reply({"inreplyto": "nobody"}, b"1"))
        requester.receive(Reply({}, b"\xff"))  # no attributes at all (undecodable)
        assert requester.pending == 0
        metrics = bus.metrics
        assert metrics is not None
        assert metrics.replies_dropped == {("duplicate",): 1, ("unmatched",): 2}
        # and the requester goes on
        assert isinstance(await bus.request(GetOrder(order_id="p"), timeout=5), str)


async def test_an_undecodable_error_reply_is_still_a_request_failed() -> None:
    stream = unique("rr")
    GetOrder = _query(stream)
    bus = _bus(stream)

    @bus.subscribe(group="fake")
    async def fake_responder(query: GetOrder, ctx: Context) -> None:  # type: ignore[valid-type]
        # a foreign responder answering with garbage as an error
        requester = _requester(bus)
        attributes = {"inreplyto": ctx.envelope.id, "type": ERROR_TYPE}
        requester.receive(Reply(attributes, b"\xffnot json"))

    async with bus:
        with pytest.raises(RequestFailed) as caught:
            await bus.request(GetOrder(order_id="o"), timeout=5)
    assert caught.value.error_type == "eventbus.DecodeError"
    assert "not json" in caught.value.error_message


@pytest.mark.parametrize("value", ["huge", "unserializable"])
async def test_a_reply_that_cannot_be_sent_dead_letters_the_request(value: str) -> None:
    stream = unique("rr")
    GetOrder = _query(stream)
    bus = _bus(stream, max_message_bytes=1024)

    @bus.responder(group="api")
    async def get(query: GetOrder) -> Any:  # type: ignore[valid-type]
        return "x" * 5000 if value == "huge" else object()

    async with bus:
        with pytest.raises(RequestFailed) as caught:
            await bus.request(GetOrder(order_id="o"), timeout=5)
        [dead] = await wait_dead(bus, stream, "api", 1)
    assert caught.value.dead_lettered
    assert caught.value.error_type == "eventbus.Reject"
    expected = "max_message_bytes" if value == "huge" else "serialized"
    assert expected in caught.value.error_message
    assert dead.headers["x-exception-type"] == "eventbus.Reject"


async def test_a_reply_to_an_inbox_that_is_gone_is_counted_undeliverable() -> None:
    stream = unique("rr")
    GetOrder = _query(stream)
    responder = _bus(stream, metrics=True)
    release = asyncio.Event()
    started = asyncio.Event()

    @responder.responder(group="api")
    async def get(query: GetOrder) -> str:  # type: ignore[valid-type]
        started.set()
        await release.wait()
        return "late"

    async with responder:
        requester = _bus(stream)
        async with requester:
            asking = asyncio.ensure_future(requester.request(GetOrder(order_id="o"), timeout=5))
            await started.wait()
        with pytest.raises(BusClosed, match=r"stopped while request order\.get waited"):
            await asking
        release.set()
        metrics = responder.metrics
        assert metrics is not None
        await until(lambda: metrics.replies_dropped.get(("undeliverable",)) == 1)
        assert responder.health().ok


async def test_publish_middleware_and_correlation_apply_to_requests() -> None:
    stream = unique("rr")
    GetOrder = _query(stream)
    seen: list[dict[str, str]] = []

    async def tenant(message: Message, call_next: PublishNext) -> None:
        message.attributes["tenant"] = "acme"
        await call_next(message)

    bus = EventBus(f"memory://{stream}", publish_middleware=[tenant])

    @bus.responder(group="api")
    async def get(query: GetOrder, ctx: Context) -> str:  # type: ignore[valid-type]
        seen.append(ctx.envelope.attributes())
        return "ok"

    async with bus:
        assert await bus.request(GetOrder(order_id="o"), timeout=5) == "ok"
    [attributes] = seen
    assert attributes["tenant"] == "acme"
    assert attributes["replyto"].startswith("replies.")


async def test_request_metrics_reach_prometheus_and_opentelemetry() -> None:
    stream = unique("rr")
    GetOrder = _query(stream)
    reader = InMemoryMetricReader()
    bus = _bus(stream, meter_provider=MeterProvider(metric_readers=[reader]))

    @bus.responder(group="api")
    async def get(query: GetOrder) -> int:  # type: ignore[valid-type]
        return 1

    async with bus:
        await bus.request(GetOrder(order_id="o"), timeout=5)
        _requester(bus).receive(Reply({"inreplyto": "stray"}, b"1"))
        body, _type = exposition(registry_of(bus), None)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    labels = (("outcome", "replied"), ("stream", stream), ("type", "order.get"))
    assert samples[("eventbus_requests_total", labels)] == 1
    assert samples[("eventbus_replies_dropped_total", (("reason", "unmatched"),))] == 1
    count = ("eventbus_request_duration_seconds_count", (("stream", stream), ("type", "order.get")))
    assert samples[count] == 1
    data = reader.get_metrics_data()
    assert data is not None
    names = {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert {"eventbus.requests", "eventbus.request.duration", "eventbus.replies.dropped"} <= names


async def test_the_timeout_error_is_a_request_timeout() -> None:
    stream = unique("rr")
    GetOrder = _query(stream)
    bus = _bus(stream)  # nobody answers

    @bus.subscribe(group="audit")
    async def audit(query: GetOrder) -> None:  # type: ignore[valid-type]
        pass

    async with bus:
        with pytest.raises(RequestTimeout) as caught:
            await bus.request(GetOrder(order_id="o"), timeout=0.2)
        assert _requester(bus).pending == 0
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert (error.request_type, error.stream, error.timeout) == ("order.get", stream, 0.2)
    assert json.dumps(str(error))  # a plain message


async def test_a_reply_larger_than_max_message_bytes_is_not_decoded() -> None:
    stream = unique("rr")
    GetOrder = _query(stream)
    bus = _bus(stream, max_message_bytes=1024)

    @bus.subscribe(group="fake")
    async def fake_responder(query: GetOrder, ctx: Context) -> None:  # type: ignore[valid-type]
        attributes = {"inreplyto": ctx.envelope.id, "type": "eventbus.reply"}
        _requester(bus).receive(Reply(attributes, b'"' + b"x" * 5000 + b'"'))

    async with bus:
        with pytest.raises(DecodeError, match="5002 bytes, above max_message_bytes=1024"):
            await bus.request(GetOrder(order_id="o"), timeout=5)
