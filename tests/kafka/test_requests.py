"""Request/reply across processes on Kafka: a responder run by `eventbus run` in a
process of its own answers this process's requests on its reply topic; and a producer
cannot turn a responder's replies onto a stream.

No `from __future__ import annotations`: handlers are annotated with per-test classes."""

import asyncio
import json

import pytest

from eventbus import Envelope, RequestFailed
from eventbus.adapters.kafka import KafkaBroker
from eventbus.testing.conformance import settle, unique, until
from tests.responder import OrderView, ResponderProcess, query_class

from .harness import KafkaHarness

pytestmark = pytest.mark.kafka
TIMEOUT = 30.0


def responder_topics(kafka: KafkaHarness, stream: str) -> None:
    """What the responder process creates, deleted at teardown."""
    kafka.extra_topics |= {stream, f"{stream}.orders-api.replay", f"{stream}.orders-api.dlq"}


async def test_a_responder_in_another_process_answers(kafka: KafkaHarness) -> None:
    stream = unique("rr")
    responder_topics(kafka, stream)
    GetOrder = query_class(stream)
    responder = ResponderProcess(kafka.url(), stream)
    try:
        await until(responder.started, timeout=90, what="the responder process")
        bus = kafka.bus(metrics=True)
        async with bus:
            view = await bus.request(
                GetOrder(order_id="o-1", n=21), timeout=TIMEOUT, reply_type=OrderView
            )
            broker = bus.broker
            assert isinstance(broker, KafkaBroker)
            reply_topics = {t for t in broker.topics.created if ".replies." in t}
            with pytest.raises(RequestFailed) as caught:
                await bus.request(GetOrder(order_id="missing-1"), timeout=TIMEOUT)
            views = await asyncio.gather(
                *(
                    bus.request(
                        GetOrder(order_id=f"o-{n}", n=n), timeout=TIMEOUT, reply_type=OrderView
                    )
                    for n in range(50)
                )
            )
            metrics = bus.metrics
            assert metrics is not None
            assert metrics.replies_dropped == {}
        assert await asyncio.to_thread(responder.stop) == 0
        [reply_topic] = reply_topics
        assert reply_topic.startswith("eventbus.replies.")
        assert await asyncio.to_thread(broker.topics.partitions, reply_topic) is None, (
            "the reply topic is deleted when the bus stops"
        )
    finally:
        responder.kill()
    assert view == OrderView(order_id="o-1", total=42, pid=responder.pid)
    assert caught.value.code == "not_found"
    assert caught.value.error_message == "order missing-1 does not exist"
    assert [(v.order_id, v.total, v.pid) for v in views] == [
        (f"o-{n}", 2 * n, responder.pid) for n in range(50)
    ]


async def test_a_request_waits_on_the_stream_for_a_restarted_responder(
    kafka: KafkaHarness,
) -> None:
    """Requests are ordinary, durable events: one published while no responder runs is
    answered by the next responder to start (from the group's committed offset), within
    the request's timeout."""
    stream = unique("rr")
    responder_topics(kafka, stream)
    GetOrder = query_class(stream)
    first = ResponderProcess(kafka.url(), stream)
    try:
        await until(first.started, timeout=90, what="the first responder")
        assert await asyncio.to_thread(first.stop) == 0
    finally:
        first.kill()
    bus = kafka.bus(metrics=True)
    second: ResponderProcess | None = None
    try:
        async with bus:
            asking = asyncio.ensure_future(
                bus.request(GetOrder(order_id="o-r", n=1), timeout=90, reply_type=OrderView)
            )
            metrics = bus.metrics
            assert metrics is not None
            await until(
                lambda: metrics.published.get((stream, "order.get")) == 1,
                what="the request stored while no responder runs",
            )
            assert not asking.done()
            second = ResponderProcess(kafka.url(), stream)
            view = await asking
        assert await asyncio.to_thread(second.stop) == 0
    finally:
        if second is not None:
            second.kill()
    assert view.order_id == "o-r" and view.pid == second.pid != first.pid


async def test_a_producer_cannot_make_a_responder_write_into_a_stream(
    kafka: KafkaHarness,
) -> None:
    """Replies go to reply topics only: a request naming the stream itself as its reply
    destination is answered into nowhere and the refusal counted; the stream gets
    nothing but what was published to it."""
    stream = unique("rr")
    GetOrder = query_class(stream)
    bus = kafka.bus(metrics=True)
    answered: list[str] = []
    seen: list[str] = []

    @bus.responder(group="orders-api")
    async def get(query: GetOrder) -> str:  # type: ignore[valid-type]
        answered.append(query.order_id)  # type: ignore[attr-defined]
        return "a reply nobody may route"

    @bus.subscribe(stream, "#", group="victim")
    async def audit(envelope: Envelope) -> None:
        seen.append(envelope.type)

    async with bus:
        body = json.dumps({"order_id": "forged"}).encode()
        await kafka.inject_raw(stream, "order.get", body, headers={"ce_replyto": stream})
        await until(lambda: answered == ["forged"] and len(seen) == 1, what="the request")
        metrics = bus.metrics
        assert metrics is not None
        await until(
            lambda: metrics.replies_dropped.get(("undeliverable",)) == 1,
            what="the reply to the stream refused",
        )
        assert (await bus.request(GetOrder(order_id="ours"), timeout=TIMEOUT)).startswith("a ")
        await settle()
    assert answered == ["forged", "ours"]
    assert seen == ["order.get", "order.get"], "the stream got no reply"
