"""Dead letters on Kafka: the topic `<stream>.<group>.dlq`.

Listing reads the topic from the committed offset of the group `<group>.dlq-replay` up to
the high watermark, without committing. Replay produces each letter (body, key and event
headers as stored; dead-letter and attempt headers stripped) to `<stream>.<group>.replay`,
which only that group consumes, and then commits the replay group's offset to the
watermark it read up to: a replayed letter is not listed again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from eventbus.broker import DeadLetter
from eventbus.deadletter import DEAD_LETTER_HEADERS
from eventbus.wire import ATTEMPT_HEADER, from_kafka_headers, header_text

from .names import (
    DUE_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    dlq_topic,
    replay_group,
    replay_topic,
)
from .producer import Record, headers_of
from .settings import ClientConfigs, config_error

_STRIPPED_ON_REPLAY = frozenset({*DEAD_LETTER_HEADERS, ATTEMPT_HEADER, DUE_HEADER})


@dataclass
class Snapshot:
    """The dead letters read in one pass, and where the pass ended per partition."""

    records: list[Message] = field(default_factory=list)
    ends: list[TopicPartition] = field(default_factory=list)


class DeadLetterReader:
    """A short-lived, assign-only consumer in the group `<group>.dlq-replay` (blocking)."""

    def __init__(self, configs: ClientConfigs, stream: str, group: str) -> None:
        self.configs = configs
        self.stream = stream
        self.group = group
        self.topic = dlq_topic(stream, group)
        config = configs.consumer(replay_group(group), {"enable.partition.eof": True})
        try:
            self._consumer = Consumer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise config_error(configs, exc, "dead-letter reader") from None

    def read(self) -> Snapshot:
        consumer = self._consumer
        timeout = self.configs.settings.admin_timeout
        metadata = consumer.list_topics(self.topic, timeout=timeout)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            return Snapshot()  # no dead-letter topic: nothing was ever dead-lettered
        partitions = sorted(topic.partitions)
        committed = consumer.committed(
            [TopicPartition(self.topic, p) for p in partitions], timeout=timeout
        )
        snapshot = Snapshot()
        starts: list[TopicPartition] = []
        ends: dict[int, int] = {}
        for tp in committed:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, tp.partition), timeout=timeout
            )
            start = max(tp.offset, low)
            snapshot.ends.append(TopicPartition(self.topic, tp.partition, high))
            if start < high:
                starts.append(TopicPartition(self.topic, tp.partition, start))
                ends[tp.partition] = high
        if not starts:
            return snapshot
        consumer.assign(starts)
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"timed out reading dead letters of {self.topic!r} "
                    f"({self.configs.target.redacted})"
                )
            for message in consumer.consume(500, 0.5):
                error = message.error()
                partition = cast(int, message.partition())
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ends.pop(partition, None)
                        continue
                    raise ConnectionError(
                        f"cannot read dead letters of {self.topic!r}: "
                        f"{self.configs.scrub(str(error))}"
                    )
                end = ends.get(partition)
                if end is None:
                    continue
                offset = cast(int, message.offset())
                if offset < end:
                    snapshot.records.append(message)
                if offset >= end - 1:
                    ends.pop(partition, None)
        snapshot.records.sort(key=lambda m: (m.timestamp()[1], m.partition(), m.offset()))
        return snapshot

    def commit(self, ends: list[TopicPartition]) -> None:
        """Move the replay group past what was replayed."""
        if ends:
            self._consumer.commit(offsets=ends, asynchronous=False)

    def close(self) -> None:
        self._consumer.close()


def dead_letter_of(stream: str, group: str, message: Message) -> DeadLetter:
    raw = headers_of(message)
    key = message.key()
    attributes, _attempt = from_kafka_headers(raw, key)
    return DeadLetter(
        stream=stream,
        group=group,
        body=message.value() or b"",
        headers=header_text(dict(raw)),
        attributes=attributes,
        key=attributes.get("partitionkey") if key is not None else None,
        position=message.offset(),
    )


def replay_record(stream: str, group: str, message: Message) -> Record:
    """The record that returns a dead letter to its group: attempt 1, origin kept."""
    raw = headers_of(message)
    texts = header_text(dict(raw))
    headers = [(n, v) for n, v in raw if n not in _STRIPPED_ON_REPLAY]
    if ORIGIN_PARTITION_HEADER not in texts:
        partition = texts.get("x-original-partition")
        offset = texts.get("x-original-offset")
        if partition and offset:
            headers.append((ORIGIN_PARTITION_HEADER, partition.encode()))
            headers.append((ORIGIN_OFFSET_HEADER, offset.encode()))
    attributes, _attempt = from_kafka_headers(raw, None)
    return Record(
        replay_topic(stream, group),
        message.value() or b"",
        message.key(),
        headers,
        attributes.get("id", ""),
    )
