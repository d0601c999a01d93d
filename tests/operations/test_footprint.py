"""What one group costs a broker, and a broker with a few hundred groups stays healthy.

Per group, measured here and printed: RabbitMQ, two quorum queues (the group's and its
dead letters'; a delayed-retry tier adds its wait queue at the first retry that needs it,
`partitions=N` adds N - 1 queues and four exchanges) and the stream's topic exchange,
shared; Kafka, two one-partition topics (dead letters, replay), a topic per delayed-retry
tier, and the stream's topic, shared. One bus then subscribes `GROUPS` groups to one
stream: it starts within `START_BOUND`, every group gets one event, a fresh connection
still opens at once, and everything is deleted again.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import subprocess
import time
from collections import Counter
from typing import Any

import pika
import pytest
from confluent_kafka.admin import AdminClient

from eventbus import Event, EventBus
from eventbus.testing.conformance import unique, until

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
KAFKA = "kafka://127.0.0.1:9092"
GROUPS = 200
#: seconds the bus may take to declare and attach every group (a loaded 2-core machine)
START_BOUND = 180.0

pytestmark = pytest.mark.soak


def rabbitmq_objects(stream: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for what in ("list_queues", "list_exchanges"):
        out = subprocess.run(
            ["rabbitmqctl", "-q", what, "name", "--no-table-headers"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        found[what.removeprefix("list_")] = sum(
            1 for line in out.split() if line == stream or line.startswith(f"{stream}.")
        )
    return found


def kafka_objects(stream: str) -> Counter[str]:
    admin = AdminClient({"bootstrap.servers": KAFKA.removeprefix("kafka://")})
    topics = admin.list_topics(timeout=30).topics
    ours = [t for n, t in topics.items() if n == stream or n.startswith(f"{stream}.")]
    return Counter(topics=len(ours), partitions=sum(len(t.partitions) for t in ours))


def handshake_seconds(url: str) -> float:
    started = time.monotonic()
    if url.startswith("amqp"):
        pika.BlockingConnection(pika.URLParameters(url)).close()
    else:
        AdminClient({"bootstrap.servers": url.removeprefix("kafka://")}).list_topics(timeout=10)
    return time.monotonic() - started


def delete(url: str, stream: str) -> None:
    if url.startswith("amqp"):
        from tests.rabbitmq.support import delete_topology

        delete_topology([stream])
    else:
        admin = AdminClient({"bootstrap.servers": url.removeprefix("kafka://")})
        names = [n for n in admin.list_topics(timeout=30).topics if n.startswith(stream)]
        if not names:
            return
        for future in admin.delete_topics(names, operation_timeout=60).values():
            future.result()


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "url",
    [
        pytest.param(RABBITMQ, marks=pytest.mark.rabbitmq, id="rabbitmq"),
        pytest.param(KAFKA, marks=pytest.mark.kafka, id="kafka"),
    ],
)
def test_a_few_hundred_groups_on_one_stream(url: str) -> None:
    count = rabbitmq_objects if url.startswith("amqp") else kafka_objects
    stream = unique("fp")

    class Ping(Event, stream=stream, type="ping"):
        n: int

    handled: Counter[str] = Counter()

    def subscribe(bus: EventBus, group: str) -> None:
        @bus.subscribe(group=group)
        async def handle(event: Ping) -> None:
            handled[group] += 1

    async def run() -> dict[str, Any]:
        one = EventBus(url)
        subscribe(one, "g0")
        async with one:
            per_group = count(stream)
        bus = EventBus(url)
        for n in range(GROUPS):
            subscribe(bus, f"g{n}")
        started = time.monotonic()
        await bus.start()
        try:
            start = time.monotonic() - started
            objects = count(stream)
            handshake = await asyncio.to_thread(handshake_seconds, url)
            await bus.publish(Ping(n=1))
            await until(lambda: len(handled) == GROUPS, timeout=120, what="every group's event")
        finally:
            await bus.stop()
        return {"per_group": per_group, "objects": objects, "start": start, "handshake": handshake}

    try:
        figures = asyncio.run(run())
    finally:
        delete(url, stream)
    print(
        f"\n{url.split(':')[0]}: one group holds {dict(figures['per_group'])} (with its "
        f"stream); {GROUPS} groups hold {dict(figures['objects'])}; the bus started in "
        f"{figures['start']:.1f} s; a fresh connection then took {figures['handshake']:.2f} s"
    )
    assert figures["start"] < START_BOUND
    assert figures["handshake"] < 5.0, "the broker no longer answers promptly"
    assert set(handled.values()) == {1}
    assert sum(count(stream).values()) == 0, "not everything was deleted"
