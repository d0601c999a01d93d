"""RabbitMQ: eventbus against raw aio-pika (confirm window) and FastStream, same broker.

Every implementation publishes persistent messages with publisher confirms to a durable
topic exchange, consumes from a durable quorum queue with prefetch 200 and acks after the
typed handler returned. The same scenarios run again on a classic queue, which does not
replicate or fsync each message: there the client, not the broker, is the bottleneck.

No `from __future__ import annotations`: handlers are annotated with per-run event classes.
"""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.metadata import version
from typing import Any

from eventbus import Context, EventBus

from .core import Scenario
from .pacing import broker_scenarios, drive
from .servers import AMQP_URL
from .targets import CLASSIC, FASTSTREAM, RAW_RABBIT
from .workload import STANDARD, TYPE, Load, OrderPayload, make_event_class, payload_fields

PREFETCH = 200
WINDOW = 256  # outstanding confirms / publish batch, for every implementation
Impl = Callable[[int, float | None, bool], Awaitable[dict[str, float]]]


def _names(load: Load = STANDARD) -> tuple[str, list[str]]:
    """A fresh stream (exchange) and the queue of each of the load's groups."""
    stream = f"bench{uuid.uuid4().hex[:8]}"
    return stream, [f"{stream}.{load.group(i)}" for i in range(load.groups)]


async def _delete(stream: str, queues: list[str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            for name in (queue, f"{queue}.dlq"):
                await channel.queue_delete(name)
        await channel.exchange_delete(stream)


# --- eventbus ------------------------------------------------------------------------------


async def eventbus_run(
    count: int,
    rate: float | None,
    consume: bool,
    queue_type: str = "quorum",
    load: Load = STANDARD,
    **options: Any,
) -> dict[str, float]:
    """`load`: the curves' variations; `options`: more EventBus arguments (the telemetry
    variants)."""
    stream, queues = _names(load)
    cls = make_event_class(stream, padded=load.pad > 0)
    bus = EventBus(AMQP_URL, prefetch=PREFETCH, **options)
    latencies = load.latencies()
    pad = load.pad

    async def handle(event: cls, ctx: Context) -> None:  # type: ignore[valid-type]
        latencies.append(time.perf_counter_ns() - event.sent_ns)  # type: ignore[attr-defined]

    for index in range(load.groups):
        bus.add_handler(handle, group=load.group(index), queue_type=queue_type)
    try:
        async with bus:

            async def publish_all() -> None:
                for first in range(0, count, WINDOW):
                    batch = range(first, min(first + WINDOW, count))
                    await bus.publish_many([cls(**payload_fields(i, pad)) for i in batch])

            async def send(i: int) -> None:
                await bus.publish(cls(**payload_fields(i, pad)))

            return await drive(count, rate, consume, publish_all, send, latencies, load.groups)
    finally:
        await _delete(stream, queues)


# --- raw aio-pika ----------------------------------------------------------------------------


async def raw_run(
    count: int,
    rate: float | None,
    consume: bool,
    queue_type: str = "quorum",
    load: Load = STANDARD,
) -> dict[str, float]:
    """`load`: the curves' variations (a queue and consumer channel per group)."""
    import aio_pika

    stream, queue_names = _names(load)
    latencies = load.latencies()
    model = load.model()
    pad = load.pad
    connection = await aio_pika.connect(AMQP_URL)
    try:
        publish_channel = await connection.channel(publisher_confirms=True)
        exchange = await publish_channel.declare_exchange(
            stream, aio_pika.ExchangeType.TOPIC, durable=True
        )

        async def on_message(message: Any) -> None:
            event = model.model_validate_json(message.body)
            latencies.append(time.perf_counter_ns() - event.sent_ns)
            await message.ack()

        for queue_name in queue_names:
            consume_channel = await connection.channel()
            await consume_channel.set_qos(prefetch_count=PREFETCH)
            queue = await consume_channel.declare_queue(
                queue_name, durable=True, arguments={"x-queue-type": queue_type}
            )
            await queue.bind(stream, TYPE)
            await queue.consume(on_message)

        def message(i: int) -> Any:
            body = model(**payload_fields(i, pad)).model_dump_json().encode()
            return aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(uuid.uuid4()),
            )

        async def send(i: int) -> None:
            await exchange.publish(message(i), TYPE, mandatory=True)

        async def publish_all() -> None:
            for first in range(0, count, WINDOW):
                await asyncio.gather(*(send(i) for i in range(first, min(first + WINDOW, count))))

        return await drive(count, rate, consume, publish_all, send, latencies, load.groups)
    finally:
        await connection.close()
        await _delete(stream, queue_names)


# --- FastStream ------------------------------------------------------------------------------


async def faststream_run(
    count: int, rate: float | None, consume: bool, queue_type: str = "quorum"
) -> dict[str, float]:
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

    stream, (queue_name,) = _names()
    latencies: list[int] = []
    broker = RabbitBroker(AMQP_URL, logger=None)
    exchange = RabbitExchange(stream, type=ExchangeType.TOPIC, durable=True)
    queue = RabbitQueue(  # type: ignore[call-overload]  # FastStream's overloads want queue_type
        queue_name, durable=True, routing_key=TYPE, arguments={"x-queue-type": queue_type}
    )

    @broker.subscriber(queue, exchange)
    async def handle(event: OrderPayload) -> None:
        latencies.append(time.perf_counter_ns() - event.sent_ns)

    await broker.start()
    try:

        async def send(i: int) -> None:
            await broker.publish(
                OrderPayload(**payload_fields(i)),
                exchange=exchange,
                routing_key=TYPE,
                persist=True,
            )

        async def publish_all() -> None:
            for first in range(0, count, WINDOW):
                await asyncio.gather(*(send(i) for i in range(first, min(first + WINDOW, count))))

        return await drive(count, rate, consume, publish_all, send, latencies)
    finally:
        await broker.stop()
        await _delete(stream, [queue_name])


def scenarios(quick: bool) -> list[Scenario]:
    count = 2_000 if quick else 20_000
    impls: dict[str, Impl] = {
        "eventbus": eventbus_run,
        RAW_RABBIT: raw_run,
        f"{FASTSTREAM} {version('faststream')}": faststream_run,
    }
    classic: dict[str, Impl] = {
        "eventbus": partial(eventbus_run, queue_type="classic"),
        RAW_RABBIT: partial(raw_run, queue_type="classic"),
        f"{FASTSTREAM} {version('faststream')}": partial(faststream_run, queue_type="classic"),
    }
    return [
        *broker_scenarios(
            "rabbitmq",
            impls,
            count,
            {1_000: 1_000 if quick else 5_000, 10_000: 3_000 if quick else 20_000},
            "persistent publish with confirms (window 256)",
            "publish with confirms -> typed handler -> ack, quorum queue, prefetch 200",
        ),
        *broker_scenarios(
            "rabbitmq",
            classic,
            count,
            {},
            "persistent publish with confirms (window 256), classic queue",
            "publish with confirms -> typed handler -> ack, classic queue, prefetch 200",
            variant=CLASSIC,
        ),
    ]
