"""A handler running longer than `max.poll.interval.ms` does not break the group: the poll
thread keeps polling (pausing the partition when its window is full), so no rebalance."""

import asyncio

import pytest

from eventbus import Event
from eventbus.adapters.kafka import KafkaSubscription
from eventbus.testing.conformance import unique, until

from .harness import KafkaHarness

pytestmark = pytest.mark.kafka


async def test_handler_longer_than_max_poll_interval_keeps_the_member(
    kafka: KafkaHarness,
) -> None:
    stream, group = unique("long"), unique("g")

    class Slow(Event, stream=stream, type="slow"):
        n: int

    handled: list[int] = []
    bus = kafka.bus(
        partitions=1,
        partition_buffer=4,
        consumer_config={"max.poll.interval.ms": 7000, "session.timeout.ms": 6000},
    )

    @bus.subscribe(group=group)
    async def handle(event: Slow) -> None:
        if event.n == 0:
            await asyncio.sleep(9)  # longer than max.poll.interval.ms
        handled.append(event.n)

    async with bus:
        await bus.publish_many([(Slow(n=i), "k") for i in range(30)])
        await until(lambda: len(handled) == 30, timeout=60, what="every event")
        [consumer] = bus._consumers
        assert isinstance(consumer, KafkaSubscription)
        assert consumer.consumer.assignments == 1, "the member was rebalanced out"
    assert handled == list(range(30))
