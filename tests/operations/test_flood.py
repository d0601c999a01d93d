"""A flood of bad input does not grow a consumer's memory.

A foreign client sends 20,000 bad messages to a running service (`eventbus run`, its own
process): undecodable bytes, a payload that fails validation, an unknown event type and a
body over `max_message_bytes`, in turn. Every undecodable, invalid or oversized one is
dead-lettered (counted by the service's `eventbus_failed_total` as bad input); an event of
a type the subscription does not take is not its business (DESIGN) and is settled without
a handler. Once the backlog is empty, the service's resident memory (VmRSS from /proc)
after the last 30,000 stays within `GROWTH` of what it was after the first 10,000 (by
then allocator pools and caches are full): a bad message costs nothing once it is settled.
A good order is still handled at the end.

The Kafka service's buffer of fetched records is bounded to `BUFFER` (and librdkafka's
prefetch with it, to its least, 1 MiB): by default they take 64 + 16 MiB, more than the
whole warm-up, so the flood sits in memory at once, and how much of such a peak the
allocator gives back to the system varies by more than `GROWTH` (a CI run measured +12.9
MiB once, this machine +1.2 MiB). What is left after bounded buffers is what the settled
messages left behind. RabbitMQ's prefetch (200 messages) bounds its buffer already.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pika
import pytest
from confluent_kafka import Producer

from eventbus import EventBus

from .service import Service, order_class, wait

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
KAFKA = "kafka://127.0.0.1:9092"

#: the bad messages of the flood, and the first of them (the warm-up)
FLOOD, WARM = 40_000, 10_000
#: the service refuses bodies above this (EVENTBUS_MAX_MESSAGE_BYTES); oversized ones are 2x
LIMIT = 4096
#: the most the service's RSS may grow between the warm-up and the end of the flood
GROWTH = 8 * 1024 * 1024
#: the Kafka service's buffer of fetched records (EVENTBUS_KAFKA_PARTITION_BUFFER_BYTES)
BUFFER = 256 * 1024

#: a type nobody subscribed to
UNKNOWN = "order.unheard-of"

pytestmark = pytest.mark.soak

Send = Callable[[str, list[tuple[str, bytes]]], None]


def bad_messages(count: int, start: int) -> list[tuple[str, bytes]]:
    """(type, body) of bad messages: undecodable, invalid, unknown type, oversized."""
    kinds = [
        ("order.placed", b"\xff\xfe{not json"),
        ("order.placed", json.dumps({"order_id": {"nested": True}}).encode()),
        (UNKNOWN, json.dumps({"order_id": "x"}).encode()),
        ("order.placed", json.dumps({"order_id": "o" * (2 * LIMIT)}).encode()),
    ]
    return [kinds[(start + n) % len(kinds)] for n in range(count)]


def dead(messages: list[tuple[str, bytes]]) -> int:
    """How many of `messages` must be dead-lettered (all but the unknown types)."""
    return sum(kind != UNKNOWN for kind, _ in messages)


def send_rabbitmq(stream: str, messages: list[tuple[str, bytes]]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for kind, body in messages:
            headers = {"ce-id": uuid.uuid4().hex, "ce-type": kind, "ce-source": "flood"}
            channel.basic_publish(
                stream, "order.placed", body, pika.BasicProperties(headers=headers)
            )
    finally:
        connection.close()


def send_kafka(stream: str, messages: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": KAFKA.removeprefix("kafka://"), "linger.ms": 5})
    for n, (kind, body) in enumerate(messages):
        headers: list[tuple[str, str | bytes | None]] = [
            ("ce_id", uuid.uuid4().hex),
            ("ce_type", kind),
            ("ce_source", "flood"),
        ]
        producer.produce(stream, body, key=f"k{n % 16}", headers=headers)
        producer.poll(0)
    assert producer.flush(60) == 0, "the flood was not delivered"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("url", "send"),
    [
        pytest.param(RABBITMQ, send_rabbitmq, marks=pytest.mark.rabbitmq, id="rabbitmq"),
        pytest.param(KAFKA, send_kafka, marks=pytest.mark.kafka, id="kafka"),
    ],
)
def test_a_flood_of_bad_messages_is_dead_lettered_and_memory_stays_flat(
    url: str, send: Send, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTBUS_MAX_MESSAGE_BYTES", str(LIMIT))
    monkeypatch.setenv("EVENTBUS_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("EVENTBUS_KAFKA_PARTITION_BUFFER_BYTES", str(BUFFER))
    service = Service(url)
    try:
        wait(service.ready, 60, "/readyz 200", service)

        def failed() -> float:
            return service.metric("eventbus_failed_total")

        def drained(count: int) -> bool:
            return failed() >= count and service.metric("eventbus_backlog") == 0

        first = bad_messages(WARM, 0)
        send(service.stream, first)
        wait(lambda: drained(dead(first)), 300, f"{WARM} bad messages settled", service)
        warm = rss(service.proc.pid)
        rest = bad_messages(FLOOD - WARM, WARM)
        send(service.stream, rest)
        total = dead(first) + dead(rest)
        wait(lambda: drained(total), 600, f"{FLOOD} bad messages settled", service)
        after = rss(service.proc.pid)
        assert failed() == total, "a bad message was counted twice"
        assert service.metric("eventbus_failed_total", outcome="bad_input") == total
        outcomes = {
            outcome: service.metric("eventbus_failed_total", outcome=outcome)
            for outcome in ("bad_input", "dead_lettered", "rejected", "retried")
        }
        print(
            f"\n{url.split(':')[0]}: {FLOOD} bad messages {outcomes}; service RSS "
            f"{warm / 2**20:.1f} MiB after {WARM}, {after / 2**20:.1f} MiB after {FLOOD} "
            f"({(after - warm) / 2**20:+.1f} MiB)"
        )
        assert after - warm < GROWTH, (
            f"RSS grew {(after - warm) / 2**20:.1f} MiB over {FLOOD - WARM} bad messages"
        )
        order = order_class(service.stream)

        async def publish_good() -> None:
            async with EventBus(url) as bus:
                await bus.publish(order(order_id="good"), key="good")

        asyncio.run(publish_good())
        wait(lambda: service.metric("eventbus_handled_total") >= 1, 60, "the good order", service)
        assert service.stop() == 0
    finally:
        service.kill()
        os.environ.pop("EVENTBUS_MAX_MESSAGE_BYTES", None)
