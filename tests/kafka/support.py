"""Helpers of the Kafka tests: raw admin/consumer look-ups on the test broker."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from .harness import BOOTSTRAP


def committed_offsets(group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (-1 where nothing is committed)."""
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group})
    try:
        found = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=30
        )
        return {tp.partition: (tp.offset if tp.offset >= 0 else -1) for tp in found}
    finally:
        consumer.close()


def read_topic(topic: str, expect: int, timeout: float = 30.0) -> list[object]:
    """Read `expect` records of a topic from the beginning (no group commits)."""
    import time

    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": f"reader-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    found: list[object] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expect and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.5):
                if message.error() is None:
                    found.append(message)
    finally:
        consumer.close()
    return found
