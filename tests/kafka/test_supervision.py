"""A consumer that dies is never left half-alive: if the pump task or the poll thread ends
while the bus runs, the bus hears of it, stops, and `run()` raises ConsumerFailed."""

import asyncio
from typing import Any

import pytest

from eventbus import ConsumerFailed, Envelope, Event
from eventbus.adapters.kafka import KafkaSubscription
from eventbus.testing.conformance import unique, until

from .harness import KafkaHarness

pytestmark = pytest.mark.kafka


class Boom(BaseException):
    """Something no `except Exception` catches."""


@pytest.mark.parametrize("part", ["pump task", "poll thread"])
async def test_consumer_death_stops_the_bus_loudly(
    kafka: KafkaHarness, monkeypatch: pytest.MonkeyPatch, part: str
) -> None:
    stream, group = unique("dies"), unique("g")

    class Ping(Event, stream=stream, type="ping"):
        n: int = 0

    bus = kafka.bus(partitions=1, freeze_heap=False)  # not the test runner's heap

    @bus.subscribe(stream, "#", group=group)
    async def handle(envelope: Envelope) -> None:
        pass

    running = asyncio.create_task(bus.run(stop_signals=()))
    try:
        await until(lambda: len(bus._consumers) == 1, what="the subscription to attach")
        [detaching] = bus._consumers
        assert isinstance(detaching, KafkaSubscription)
        consumer = detaching.consumer

        def boom(*_args: Any) -> Any:
            raise Boom(f"the {part} broke") if part == "pump task" else RuntimeError("broke")

        if part == "pump task":
            monkeypatch.setattr("eventbus.adapters.kafka.consumer.from_kafka_headers", boom)
        else:
            monkeypatch.setattr(consumer, "_fetched", boom)
        publisher = kafka.bus()
        async with publisher:
            await publisher.publish(Ping())
        with pytest.raises(ConsumerFailed) as failed:
            await asyncio.wait_for(asyncio.shield(running), 30)
        assert part in str(failed.value)
        assert not bus.running
        assert not bus.health().ok
    finally:
        if not running.done():
            running.cancel()
        await asyncio.gather(running, return_exceptions=True)
