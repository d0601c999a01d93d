"""Request/reply across processes on RabbitMQ: a responder run by `eventbus run` in a
process of its own answers this process's requests through direct reply-to; and a
producer cannot turn a responder's replies onto a queue.

No `from __future__ import annotations`: handlers are annotated with per-test classes."""

import asyncio
import json

import pika
import pytest

from eventbus import Envelope, RequestFailed
from eventbus.testing.conformance import settle, until
from tests.responder import OrderView, ResponderProcess, query_class

from .conftest import Broker
from .support import raw_connection

pytestmark = pytest.mark.rabbitmq
TIMEOUT = 30.0


async def test_a_responder_in_another_process_answers(rabbit: Broker) -> None:
    stream = rabbit.stream()
    GetOrder = query_class(stream)
    responder = ResponderProcess(rabbit.url, stream)
    try:
        await until(responder.started, timeout=90, what="the responder process")
        bus = rabbit.bus(metrics=True)
        async with bus:
            view = await bus.request(
                GetOrder(order_id="o-1", n=21), timeout=TIMEOUT, reply_type=OrderView
            )
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
    finally:
        responder.kill()
    assert view == OrderView(order_id="o-1", total=42, pid=responder.pid)
    assert caught.value.code == "not_found"
    assert caught.value.error_message == "order missing-1 does not exist"
    assert [(v.order_id, v.total, v.pid) for v in views] == [
        (f"o-{n}", 2 * n, responder.pid) for n in range(50)
    ]


async def test_a_request_waits_in_the_queue_for_a_restarted_responder(rabbit: Broker) -> None:
    """Requests are ordinary, durable events: one published while no responder runs is
    answered by the next responder to start, within the request's timeout."""
    stream = rabbit.stream()
    GetOrder = query_class(stream)
    first = ResponderProcess(rabbit.url, stream)
    try:
        await until(first.started, timeout=90, what="the first responder")
        assert await asyncio.to_thread(first.stop) == 0  # the group's queue stays
    finally:
        first.kill()
    bus = rabbit.bus(metrics=True)
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
            second = ResponderProcess(rabbit.url, stream)
            view = await asking
        assert await asyncio.to_thread(second.stop) == 0
    finally:
        if second is not None:
            second.kill()
    assert view.order_id == "o-r" and view.pid == second.pid != first.pid


def _publish_raw(stream: str, body: bytes, properties: pika.BasicProperties) -> None:
    connection = raw_connection()
    try:
        connection.channel().basic_publish(stream, "order.get", body, properties)
    finally:
        connection.close()


async def test_a_producer_cannot_make_a_responder_write_into_a_queue(rabbit: Broker) -> None:
    """Replies go to direct reply-to addresses only: a request naming a group's queue as
    its reply destination (in `reply_to` or `ce-replyto`) is answered into nowhere and
    the refusal counted; the queue gets nothing but what was published to it."""
    stream = rabbit.stream()
    GetOrder = query_class(stream)
    bus = rabbit.bus(metrics=True)
    victim = f"{stream}.victim"
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
        for order_id, properties in (
            ("property", pika.BasicProperties(reply_to=victim)),
            ("header", pika.BasicProperties(headers={"ce-replyto": victim})),
        ):
            body = json.dumps({"order_id": order_id}).encode()
            await asyncio.to_thread(_publish_raw, stream, body, properties)
        await until(lambda: len(answered) == 2 and len(seen) == 2, what="both requests")
        metrics = bus.metrics
        assert metrics is not None
        await until(
            lambda: metrics.replies_dropped.get(("undeliverable",)) == 1,
            what="the reply to a queue refused",
        )
        assert (await bus.request(GetOrder(order_id="ours"), timeout=TIMEOUT)).startswith("a ")
        await settle()
    assert sorted(answered) == ["header", "ours", "property"]
    assert seen == ["order.get"] * 3, "the victim's queue got no reply"
