"""Dead letters on Kafka: the topic `<stream>.<group>.dlq`.

Listing reads the topic from the committed offset of the group `<group>.dlq-replay` up to
the high watermark found when it starts, without committing, and yields the letters as
they are read (oldest first across partitions: a merge on the record timestamps), so a
large dead-letter topic is never held in memory. Replay produces each letter (body, key
and event headers as stored; dead-letter, attempt and origin headers stripped, the origin
rebuilt from `x-original-partition/offset`) to `<stream>.<group>.replay`, which only that
group consumes, batch by batch, and commits the replay group's offsets after each batch:
a replayed letter is not listed again. Every wait on the broker is bounded by
`admin_timeout`: a read that makes no progress for that long raises TimeoutError.

Replaying or purging a selection (`DeadLetterWriter`) cannot delete from the middle of a
topic, so each batch is settled in one Kafka transaction: the selected letters go to the
replay topic (or nowhere: purged), the others are appended again to the dead-letter
topic, each to the partition it was in, with its timestamp, key and headers, in order,
and the replay group moves past the batch. Readers (`read_committed`, librdkafka's
default) see the batch either before or after, never twice or half; a failure aborts the
batch. Dead letters that arrive during the operation land before the kept ones. The
transactional id is `eventbus-dlq.<stream>.<group>`: a second tool on the same group
fences the first (its batch aborts), so the two never both settle a letter.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import cast

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from eventbus.toolkit import (
    ATTEMPT_HEADER,
    DEAD_LETTER_HEADERS,
    DeadLetter,
    derived_id,
    from_kafka_headers,
    header_text,
)

from .names import (
    DUE_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    dlq_topic,
    replay_group,
    replay_topic,
)
from .producer import Headers, Record, release
from .records import headers_of
from .settings import ClientConfigs, MiB, config_error

_STRIPPED_ON_REPLAY = frozenset(
    {
        *DEAD_LETTER_HEADERS,
        ATTEMPT_HEADER,
        DUE_HEADER,
        ORIGIN_PARTITION_HEADER,
        ORIGIN_OFFSET_HEADER,
    }
)
_FENCED = frozenset(
    (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)
)
_DENIED = frozenset(
    (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED)
)
#: letters handed out per step (at most about `_BUFFERED_BYTES` of them), and the bytes
#: of letters buffered per partition before that partition's fetching pauses (the merge
#: waits for the others)
BATCH = 500
_BUFFERED_BYTES = 8 * MiB
#: the reader's librdkafka prefetch (a quarter of this)
_READER_BUFFER = 16 * MiB


class DeadLetterReader:
    """A short-lived, assign-only consumer in the group `<group>.dlq-replay` (blocking).

    `open()` finds where to start and end, `next_batch()` returns the next letters in
    order (None once every partition reached its end), `commit()` moves the replay group.
    """

    def __init__(self, configs: ClientConfigs, stream: str, group: str) -> None:
        self.configs = configs
        self.stream = stream
        self.group = group
        self.topic = dlq_topic(stream, group)
        self.timeout = configs.settings.admin_timeout
        config = configs.consumer(
            replay_group(group), {"enable.partition.eof": True}, _READER_BUFFER
        )
        try:
            self._consumer = Consumer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise config_error(configs, exc, "dead-letter reader") from None
        #: per partition: the high watermark found by `open` (where reading ends)
        self.ends: list[TopicPartition] = []
        #: partitions still being read -> their end offset
        self._reading: dict[int, int] = {}
        #: letters read, not handed out yet, per partition (and their bytes)
        self._buffered: dict[int, deque[Message]] = {}
        self._bytes: dict[int, int] = {}
        self._paused: set[int] = set()
        #: per partition: the offset after the last letter handed out
        self._next: dict[int, int] = {}
        #: per partition read to its end: where the end was met (the high watermark, or
        #: the last stable offset while another tool's transaction is open)
        self._reached: dict[int, int] = {}
        #: letters handed to Python by the client so far (tests)
        self.read = 0

    def _failed(self, what: str, exc: BaseException) -> ConnectionError:
        return ConnectionError(
            f"cannot {what} the dead letters of {self.topic!r} "
            f"({self.configs.target.redacted}) within {self.timeout}s "
            f"(EVENTBUS_KAFKA_ADMIN_TIMEOUT): {self.configs.scrub(str(exc))}"
        )

    def open(self) -> bool:
        """Find the range to read; False if there is nothing (or no dead-letter topic)."""
        consumer = self._consumer
        timeout = self.timeout
        try:
            metadata = consumer.list_topics(self.topic, timeout=timeout)
            topic = metadata.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                return False  # no dead-letter topic: nothing was ever dead-lettered
            partitions = sorted(topic.partitions)
            committed = consumer.committed(
                [TopicPartition(self.topic, p) for p in partitions], timeout=timeout
            )
            starts: list[TopicPartition] = []
            for tp in committed:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=timeout
                )
                start = max(tp.offset, low)
                self.ends.append(TopicPartition(self.topic, tp.partition, high))
                if start < high:
                    starts.append(TopicPartition(self.topic, tp.partition, start))
                    self._reading[tp.partition] = high
                    self._buffered[tp.partition] = deque()
                    self._bytes[tp.partition] = 0
            if starts:
                consumer.assign(starts)
        except KafkaException as exc:
            raise self._failed("look up", exc) from None
        return bool(starts)

    def next_batch(self) -> list[Message] | None:
        """The next letters, oldest first (None: all read). A letter is handed out once
        every partition still being read has one buffered to compare it with."""
        buffered = self._buffered
        deadline = time.monotonic() + self.timeout
        while True:
            out: list[Message] = []
            size = 0
            while len(out) < BATCH and size < _BUFFERED_BYTES:
                heads = [q for q in buffered.values() if q]
                if not heads or any(not buffered[p] for p in self._reading):
                    break
                oldest = min(heads, key=_order)
                message = oldest.popleft()
                partition = cast(int, message.partition())
                self._bytes[partition] -= len(message)
                size += len(message)
                self._next[partition] = cast(int, message.offset()) + 1
                out.append(message)
            if out:
                self._flow()
                return out
            if not self._reading:
                return None
            if self._fill():
                deadline = time.monotonic() + self.timeout
            elif time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading the dead letters of {self.topic!r} "
                    f"({self.configs.target.redacted}) made no progress within "
                    f"{self.timeout}s (EVENTBUS_KAFKA_ADMIN_TIMEOUT)"
                )

    def _fill(self) -> bool:
        """Read what the client has; True if anything arrived (a letter or an end)."""
        try:
            messages = self._consumer.consume(BATCH, 0.2)
        except KafkaException as exc:
            raise self._failed("read", exc) from None
        progress = False
        reading = self._reading
        for message in messages:
            partition = cast(int, message.partition())
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    end = reading.pop(partition, None)
                    if end is not None:  # (past `end` if letters were added meanwhile)
                        self._reached[partition] = min(cast(int, message.offset()), end)
                        progress = True
                    continue
                raise self._failed("read", KafkaException(error))
            end = reading.get(partition)
            if end is None:
                continue
            offset = cast(int, message.offset())
            if offset < end:
                self.read += 1
                self._buffered[partition].append(message)
                self._bytes[partition] += len(message)
                progress = True
            if offset >= end - 1:  # the last one, or one added since `open`: done
                reading.pop(partition, None)
                self._reached[partition] = end
                progress = True
        self._flow()
        return progress

    def _flow(self) -> None:
        """Pause partitions that have plenty buffered, resume the drained ones."""
        pause = [p for p in self._reading if p not in self._paused and self._full(p)]
        resume = [p for p in self._paused if p not in self._reading or not self._full(p)]
        try:
            if pause:
                self._consumer.pause([TopicPartition(self.topic, p) for p in pause])
            if resume:
                self._consumer.resume([TopicPartition(self.topic, p) for p in resume])
        except KafkaException as exc:
            raise self._failed("read", exc) from None
        self._paused.update(pause)
        self._paused.difference_update(resume)

    def _full(self, partition: int) -> bool:
        return self._bytes[partition] >= _BUFFERED_BYTES or len(self._buffered[partition]) >= (
            4 * BATCH
        )

    def handed_out(self) -> list[TopicPartition]:
        """Where the replay group may move: after the last letter handed out, per partition."""
        return [TopicPartition(self.topic, p, n) for p, n in sorted(self._next.items())]

    def reached(self) -> list[TopicPartition]:
        """Where the replay group may move once everything was read: the end met per
        partition (past trailing transaction markers), never past a letter not read."""
        return [TopicPartition(self.topic, p, n) for p, n in sorted(self._reached.items())]

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def commit(self, offsets: list[TopicPartition]) -> None:
        """Move the replay group past what was replayed."""
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                raise self._failed("commit the replay of", exc) from None

    def close(self) -> None:
        self._consumer.close()


def _order(queue: deque[Message]) -> tuple[int, int, int]:
    head = queue[0]
    return (head.timestamp()[1], cast(int, head.partition()), cast(int, head.offset()))


def dead_letter_of(stream: str, group: str, message: Message) -> DeadLetter:
    raw = headers_of(message)
    key = message.key()
    attributes, _attempt = from_kafka_headers(raw, key)
    headers = header_text(dict(raw))
    if not attributes.get("id"):  # id-less: the id its handler saw (from its position)
        partition, offset = headers.get("x-original-partition"), headers.get("x-original-offset")
        if partition and offset:
            attributes["id"] = derived_id("kafka", stream, partition, offset)
    return DeadLetter(
        stream=stream,
        group=group,
        body=message.value() or b"",
        headers=headers,
        attributes=attributes,
        key=attributes.get("partitionkey") if key is not None else None,
        position=message.offset(),
    )


def replay_record(stream: str, group: str, message: Message) -> Record:
    """The record that returns a dead letter to its group: attempt 1, origin kept (from
    the dead-letter headers, which the dead-lettering side wrote)."""
    raw = headers_of(message)
    texts = header_text(dict(raw))
    headers = [(n, v) for n, v in raw if n.lower() not in _STRIPPED_ON_REPLAY]
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


def kept_record(message: Message) -> Kept:
    """A letter appended again to its dead-letter topic, as it was: same partition, key,
    headers (those the client can read) and timestamp."""
    kind, stamp = message.timestamp()
    return Kept(
        cast(str, message.topic()),
        cast(int, message.partition()),
        message.value() or b"",
        message.key(),
        headers_of(message),
        stamp if kind != TIMESTAMP_NOT_AVAILABLE else 0,
    )


@dataclass(slots=True)
class Kept:
    topic: str
    partition: int
    value: bytes
    key: bytes | None
    headers: Headers
    timestamp: int


class DeadLetterWriter:
    """The transactional producer of a selective replay or purge (blocking; see the
    module docstring): `settle` stores one batch and moves the replay group in one
    transaction."""

    def __init__(self, configs: ClientConfigs, stream: str, group: str) -> None:
        self.configs = configs
        self.topic = dlq_topic(stream, group)
        self.timeout = configs.settings.admin_timeout
        self.transactional_id = f"eventbus-dlq.{stream}.{group}"
        config = {**configs.producer(transactional=True), "transactional.id": self.transactional_id}
        try:
            self._producer = Producer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise config_error(configs, exc, "dead-letter writer") from None

    def _failed(self, what: str, exc: BaseException) -> ConnectionError:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        hint = ""
        if error is not None and error.code() in _FENCED:
            hint = ": another dead-letter tool works on this group now"
        elif error is not None and error.code() in _DENIED:
            hint = (
                f": eventbus needs Write and Describe on the transactional id "
                f"{self.transactional_id!r} to replay or purge a selection"
            )
        return ConnectionError(
            f"cannot {what} the dead letters of {self.topic!r} "
            f"({self.configs.target.redacted}) within {self.timeout}s"
            f"{hint} ({self.configs.scrub(str(exc))})"
        )

    def open(self) -> None:
        try:
            self._producer.init_transactions(self.timeout)
        except KafkaException as exc:
            raise self._failed("start rewriting", exc) from None

    def settle(
        self,
        records: list[Record | Kept],
        offsets: list[TopicPartition],
        reader: DeadLetterReader,
    ) -> None:
        """Store `records` and move the replay group to `offsets`, all or nothing."""
        producer = self._producer
        try:
            producer.begin_transaction()
            for record in records:
                self._produce(record)
            producer.send_offsets_to_transaction(offsets, reader.group_metadata(), self.timeout)
            producer.commit_transaction(self.timeout)
        except KafkaException as exc:
            with contextlib.suppress(KafkaException):
                producer.abort_transaction(self.timeout)
            raise self._failed("rewrite", exc) from None

    def _produce(self, record: Record | Kept) -> None:
        while True:
            try:
                if isinstance(record, Kept):
                    self._producer.produce(
                        record.topic,
                        record.value,
                        record.key,
                        partition=record.partition,
                        timestamp=record.timestamp,
                        headers=record.headers,
                    )
                else:
                    self._producer.produce(
                        record.topic, record.value, record.key, headers=record.headers
                    )
                return
            except BufferError:  # the local queue is full: let it drain
                self._producer.poll(0.05)

    def close(self) -> None:
        release(self._producer, self.timeout)
