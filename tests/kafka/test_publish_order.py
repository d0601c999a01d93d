"""Concurrent publishes of one key keep their call order on the topic, also the ones
called while the bus is still looking its topic up (its first publishes).

No `from __future__ import annotations`: the events are made per test.
"""

import asyncio
import itertools
import json
from typing import Any

import pytest

from eventbus.adapters.kafka.producer import AsyncProducer, Record
from eventbus.testing.conformance import make_events, unique

from .harness import KafkaHarness
from .support import read_topic

pytestmark = pytest.mark.kafka


async def test_publishes_called_while_the_topic_is_looked_up_keep_their_order(
    kafka: KafkaHarness,
) -> None:
    ev = make_events(unique("order"))
    creator = kafka.bus()
    async with creator:  # the topic exists, but the publishing bus does not know it yet
        await creator.publish(ev.Created(order_id="first", n=-1), key="k")
    bus = kafka.bus()
    total = 400
    async with bus:
        tasks = []
        for n in range(total):
            tasks.append(asyncio.create_task(bus.publish(ev.Created(order_id="k", n=n), key="k")))
            # one publish per loop turn, as a steady stream of callers makes them: some are
            # called while the first ones still wait for the topic look-up
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
    records = await asyncio.to_thread(read_topic, ev.stream, total + 1)
    stored = [json.loads(r.value())["n"] for r in records]  # type: ignore[attr-defined]
    assert stored == list(range(-1, total)), [
        (a, b) for a, b in itertools.pairwise(stored) if b < a
    ][:10]


async def test_publishes_beyond_the_local_queue_wait_for_room_and_keep_their_order(
    kafka: KafkaHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librdkafka's local queue holds 8 records here (`queue.buffering.max.messages`):
    single publishes and a batch of far more than that wait for room (the poll thread
    drains the queue as reports arrive), none fails, and the topic holds them in call
    order."""
    waits: list[str] = []
    produce = AsyncProducer._produce

    async def waited(self: AsyncProducer, record: Record, callback: Any) -> None:
        waits.append(record.topic)
        await produce(self, record, callback)

    monkeypatch.setattr(AsyncProducer, "_produce", waited)
    ev = make_events(unique("order"))
    bus = kafka.bus(producer_config={"queue.buffering.max.messages": 8})
    singles, batch = 200, 300
    async with bus:
        await asyncio.gather(
            *(bus.publish(ev.Created(order_id="k", n=n), key="k") for n in range(singles))
        )
        await bus.publish_many(
            [ev.Created(order_id="k", n=n) for n in range(singles, singles + batch)],
            key=lambda event: "k",
        )
    records = await asyncio.to_thread(read_topic, ev.stream, singles + batch)
    stored = [json.loads(r.value())["n"] for r in records]  # type: ignore[attr-defined]
    assert stored == list(range(singles + batch))
    assert len(waits) > 10  # the queue was full that often: the waiting path ran
