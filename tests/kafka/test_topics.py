"""Topics: created with the configured partitions, or a clear error when creation is off."""

import asyncio

import pytest

from eventbus import ConfigurationError, Envelope, Event, RetryPolicy
from eventbus.adapters.kafka import KafkaBroker
from eventbus.testing.conformance import unique

from .harness import KafkaHarness

pytestmark = pytest.mark.kafka


async def test_topics_are_created_with_configured_partitions(kafka: KafkaHarness) -> None:
    stream, group = unique("topics"), unique("g")
    bus = kafka.bus(partitions=4, dlq_partitions=2, replication_factor=1)

    @bus.subscribe(stream, group=group, retry=RetryPolicy(attempts=3, delayed=True))
    async def handle(envelope: Envelope) -> None:
        pass

    broker = bus.broker
    assert isinstance(broker, KafkaBroker)
    async with bus:
        counts = {
            name: await asyncio.to_thread(broker.topics.partitions, name)
            for name in (
                stream,
                f"{stream}.{group}.retry.0",
                f"{stream}.{group}.retry.1",
                f"{stream}.{group}.replay",
                f"{stream}.{group}.dlq",
            )
        }
    assert counts == {
        stream: 4,
        f"{stream}.{group}.retry.0": 4,
        f"{stream}.{group}.retry.1": 4,
        f"{stream}.{group}.replay": 2,
        f"{stream}.{group}.dlq": 2,
    }


async def test_missing_topic_with_creation_off_names_topic_and_option(kafka: KafkaHarness) -> None:
    stream = unique("missing")

    class Created(Event, stream=stream, type="order.created"):
        order_id: str

    bus = kafka.bus(create_topics=False)

    @bus.subscribe(group="g")
    async def handle(event: Created) -> None:
        pass

    with pytest.raises(ConfigurationError) as info:
        await bus.start()
    assert stream in str(info.value)
    assert "EVENTBUS_KAFKA_CREATE_TOPICS" in str(info.value)

    publisher = kafka.bus(create_topics=False)
    async with publisher:
        with pytest.raises(ConfigurationError) as publish_error:
            await publisher.publish(Created(order_id="x"))
    assert stream in str(publish_error.value)
