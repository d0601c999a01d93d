"""The Kafka harness of the conformance suite, and the raw client the Kafka tests share."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from confluent_kafka import Producer

from adapters.kafka import KafkaBroker
from eventbus import EventBus
from tests.conformance.harness import Harness

#: the broker started by scripts/kafka.sh
KAFKA_URL = os.environ.get("EVENTBUS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092")
BOOTSTRAP = KAFKA_URL.removeprefix("kafka://")


def raw_produce(
    topic: str,
    value: bytes,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Produce one record with a plain confluent Producer, as a foreign client would."""
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "allow.auto.create.topics": False})
    errors: list[Any] = []
    producer.produce(
        topic, value, key, headers=headers or [], on_delivery=lambda err, _m: errors.append(err)
    )
    producer.flush(30)
    if errors != [None]:
        raise AssertionError(f"raw produce to {topic!r} failed: {errors}")


class KafkaHarness(Harness):
    name = "kafka"

    def __init__(self) -> None:
        self._brokers: list[KafkaBroker] = []
        #: more topics to delete at teardown (made by subprocesses or raw clients)
        self.extra_topics: set[str] = set()

    def url(self) -> str:
        return KAFKA_URL

    def bus(self, **options: Any) -> EventBus:
        bus = EventBus(self.url(), **options)
        broker = bus.broker
        assert isinstance(broker, KafkaBroker)
        self._brokers.append(broker)
        return bus

    async def inject_raw(
        self, stream: str, event_type: str | None, body: bytes, key: str | None = None
    ) -> None:
        headers = [("ce_type", event_type.encode())] if event_type is not None else []
        await asyncio.to_thread(
            raw_produce, stream, body, key.encode() if key is not None else None, headers
        )

    async def teardown(self) -> None:
        """Delete the topics this test's buses created (cheap, keeps the broker small)."""
        names = set(self.extra_topics)
        for broker in self._brokers:
            names |= broker.topics.created
        if names and self._brokers:
            await asyncio.to_thread(self._brokers[0].topics.delete, names)
