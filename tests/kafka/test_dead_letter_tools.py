"""Replaying and purging a selection of dead letters on Kafka: each batch settles in one
transaction, the letters not taken are appended again to the partition they were in with
their timestamp, so the listing keeps its oldest-first order across partitions; the
replay group never moves past a letter it did not read."""

import asyncio
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from eventbus.adapters.kafka.dlq import BATCH
from eventbus.testing.conformance import unique, until

from .harness import BOOTSTRAP, KafkaHarness

pytestmark = pytest.mark.kafka


def fill(topic: str, total: int) -> None:
    """`total` letters on two partitions (every third on partition 1), timestamps rising."""
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 20})
    base = int(time.time() * 1000) - total
    for n in range(total):
        headers: list[tuple[str, str | bytes | None]] = [
            ("ce_type", b"t"),
            ("ce_id", f"id-{n}".encode()),
        ]
        producer.produce(
            topic,
            b"{}",
            f"k{n}".encode(),
            partition=1 if n % 3 == 0 else 0,
            timestamp=base + n,
            headers=headers,
        )
        producer.poll(0)
    assert producer.flush(30) == 0


def partitions_of(topic: str, ids: set[str]) -> dict[str, set[int]]:
    """Where records with these ids are in `topic` (every partition they appear in)."""
    consumer = Consumer(
        {"bootstrap.servers": BOOTSTRAP, "group.id": unique("peek"), "enable.partition.eof": True}
    )
    where: dict[str, set[int]] = {}
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
        ended: set[int] = set()
        while len(ended) < 2:
            for message in consumer.consume(500, 1.0):
                if message.error() is not None:
                    ended.add(int(message.partition() or 0))
                    continue
                value = dict(message.headers() or [])["ce_id"]
                assert isinstance(value, bytes)
                name = value.decode()
                if name in ids:
                    where.setdefault(name, set()).add(int(message.partition() or 0))
    finally:
        consumer.close()
    return where


async def test_selected_letters_are_taken_and_the_rest_keep_order_and_partition(
    kafka: KafkaHarness,
) -> None:
    stream, group = unique("tools"), unique("g")
    total = 3 * BATCH
    bus = kafka.bus(partitions=1, dlq_partitions=2)
    replayed: list[str] = []

    @bus.subscribe(stream, "#", group=group)
    async def handle(envelope: Any) -> None:
        replayed.append(envelope.id)

    topic = f"{stream}.{group}.dlq"
    ids = [f"id-{n}" for n in range(total)]
    async with bus:
        await asyncio.to_thread(fill, topic, total)
        seen: list[str] = []

        def every_fourth(letter: Any) -> bool:
            seen.append(letter.attributes["id"])
            return int(letter.attributes["id"][3:]) % 4 == 0

        assert await bus.purge_dead_letters(stream, group, select=every_fourth) == total // 4
        assert seen == ids, "select sees each letter once, oldest first"
        left = [i for i in ids if int(i[3:]) % 4]
        listed = [letter.attributes["id"] async for letter in bus.dead_letters(stream, group)]
        assert listed == left

        def every_fifth(letter: Any) -> bool:
            return int(letter.attributes["id"][3:]) % 5 == 0

        chosen = [i for i in left if int(i[3:]) % 5 == 0]
        assert await bus.replay_dead_letters(stream, group, select=every_fifth) == len(chosen)
        await until(lambda: len(replayed) >= len(chosen), what="the replayed letters")
        left = [i for i in left if i not in set(chosen)]
        listed = [letter.attributes["id"] async for letter in bus.dead_letters(stream, group)]
        assert listed == left
        assert await bus.purge_dead_letters(stream, group, select=lambda letter: False) == 0
        listed = [letter.attributes["id"] async for letter in bus.dead_letters(stream, group)]
        assert listed == left, "a pass that takes nothing changes nothing"
    assert sorted(replayed) == sorted(chosen)
    sample = {f"id-{n}" for n in (1, 2, 3, 5, 6, 7)} & set(left)
    where = await asyncio.to_thread(partitions_of, topic, sample)
    assert where == {i: {1 if int(i[3:]) % 3 == 0 else 0} for i in sample}, "same partition"
