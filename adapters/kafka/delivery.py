"""`KafkaDelivery`: one consumed record, settled by marking its offset finished, by a copy
on a retry topic, or by a copy on the dead-letter topic (each durable before the ack).

Copies carry the record's body, key and headers, minus the transport bookkeeping that the
copying side writes itself: the attempt count and due time (retry copies), where the
record first was in its stream (`x-eventbus-origin-*`, from the delivery's trusted
position), and every dead-letter header (`x-original-*`, `x-exception-*`, ...): a foreign
producer cannot forge any of them into a copy. A copy is produced once per delivery: if
the pipeline retries a settlement whose copy is still waiting for its delivery report, it
waits for that copy again instead of producing a second one.

On an exactly-once subscription nothing is produced here: the events the handler
publishes are staged on the delivery (`stage`), and every settlement hands the records
that settle it (those events on ack; the retry or dead-letter copy otherwise) to the
consumer, which commits them with the offset in one transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from eventbus.toolkit import (
    ATTEMPT_HEADER,
    DEAD_LETTER_HEADERS,
    Delivery,
    Message,
    MessageTooLarge,
    PublishError,
)

from .names import (
    DUE_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    dlq_topic,
    replay_topic,
    retry_topic,
)
from .producer import Headers, Record, header_bytes, record_bytes, record_of

if TYPE_CHECKING:
    from .consumer import KafkaConsumer, PartitionState

_ORIGIN = frozenset({ORIGIN_PARTITION_HEADER, ORIGIN_OFFSET_HEADER})
#: headers a retry copy writes itself
_RETRY_REPLACED = frozenset({ATTEMPT_HEADER, DUE_HEADER, *_ORIGIN})
#: headers a dead-letter copy never takes from the record (compared in lower case)
_DEAD_LETTER_DROPPED = frozenset({*DEAD_LETTER_HEADERS, *_ORIGIN})
#: added headers shortened, in this order, when a dead letter would be too large
_SHRINKABLE = (
    ("x-exception-stacktrace", 0),
    ("x-exception-message", 256),
    ("x-original-type", 256),
)


class KafkaDelivery(Delivery):
    __slots__ = (
        "_consumer",
        "_copy",
        "_epoch",
        "_offset",
        "_part",
        "_raw_headers",
        "_raw_key",
        "_settled",
        "_staged",
    )

    def __init__(
        self,
        consumer: KafkaConsumer,
        part: PartitionState,
        record_offset: int,
        raw_key: bytes | None,
        raw_headers: Headers,
        stream: str,
        body: bytes,
        attributes: dict[str, str],
        key: str | None,
        attempt: int,
        partition: int,
        offset: int,
        defect: str | None,
        epoch: int = 0,
    ) -> None:
        # positional (this runs once per record); the raw headers stay in `_raw_headers`
        Delivery.__init__(
            self, stream, body, attributes, {}, key, attempt, partition, offset, None, False, defect
        )
        self._consumer = consumer
        self._part = part
        self._offset = record_offset
        self._raw_key = raw_key
        self._raw_headers = raw_headers
        self._settled = False
        #: the copy on its way (retry or dead letter) and its delivery report
        self._copy: tuple[str, asyncio.Future[None]] | None = None
        #: the partition's rewind epoch when the record was handed over
        self._epoch = epoch
        #: exactly-once: the handler's events, committed with the ack
        self._staged: list[Record] | None = None

    def _settle(self, finished: bool, staged: list[Record] | None = None) -> None:
        if not self._settled:
            self._settled = True
            self._staged = None
            self._consumer.settle(self._part, self._offset, finished, self._epoch, staged)

    async def ack(self) -> None:
        self._settle(True, self._staged)

    async def nack(self) -> None:
        self._settle(False)

    async def stage(self, message: Message) -> None:
        consumer = self._consumer
        if not consumer.exactly_once:
            raise RuntimeError("stage() is for exactly-once subscriptions only")
        if self._settled:
            raise RuntimeError(
                f"event {self.attributes.get('id', '?')} is settled: publish from its handler"
            )
        record = record_of(message)
        limit = consumer.configs.producer_max_bytes
        if consumer.record_limit is not None:
            limit = await consumer.record_limit(message.stream)
        size = record_bytes(record)
        if size > limit:  # refused now, in the handler: in the commit it would abort it
            raise MessageTooLarge(
                f"event {record.label or '?'} for topic {record.topic!r} is about {size} "
                f"bytes, more than the topic takes or the producer sends ({limit} bytes: "
                "max.message.bytes); publish a smaller event"
            )
        if self._staged is None:
            self._staged = [record]
        else:
            self._staged.append(record)

    def unstage(self) -> None:
        self._staged = None

    def _origin(self) -> Headers:
        """Where this record first was in its stream: the delivery's position, which the
        consumer took from these headers only on the group's own retry/replay topics."""
        return [
            (ORIGIN_PARTITION_HEADER, str(self.partition).encode()),
            (ORIGIN_OFFSET_HEADER, str(self.offset).encode()),
        ]

    async def retry_later(self, attempt: int, delay: float) -> None:
        if self._settled:
            return
        if self._consumer.exactly_once:  # committed with the offset, in one transaction
            self._settle(True, [self._retry_record(attempt, delay)])
            return
        await self._store("retry", lambda: self._retry_record(attempt, delay))
        self._settle(True)

    async def dead_letter(self, info: dict[str, str]) -> None:
        if self._settled:
            return
        if self._consumer.exactly_once:  # committed with the offset, in one transaction
            self._settle(True, [self._dead_letter_record(info)])
            return
        await self._store("dead letter", lambda: self._dead_letter_record(info))
        self._settle(True)

    async def _store(self, kind: str, build: Callable[[], Record]) -> None:
        """Produce the copy (once), wait for its delivery report (bounded); raise if it is
        not stored, so that the pipeline retries (waiting for the same copy again)."""
        consumer = self._consumer
        copy = self._copy
        if copy is None or copy[0] != kind or _failed(copy[1]):
            copy = self._copy = (kind, await consumer.producer.submit(build()))
        timeout = consumer.configs.settings.admin_timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(copy[1])
        except TimeoutError:
            spec = consumer.spec
            raise PublishError(
                f"the {kind} copy of event {self.attributes.get('id', '?')} "
                f"({spec.stream}/{spec.group}) was not confirmed by Kafka within {timeout}s "
                "(EVENTBUS_KAFKA_ADMIN_TIMEOUT); it is still being sent"
            ) from None

    def _retry_record(self, attempt: int, delay: float) -> Record:
        spec = self._consumer.spec
        tiers = spec.retry_tiers
        if tiers:
            topic = retry_topic(spec.stream, spec.group, min(max(attempt - 2, 0), len(tiers) - 1))
        else:  # Retry(after=...) without a delayed policy never gets here; be safe anyway
            topic = replay_topic(spec.stream, spec.group)
        due = int((time.time() + max(delay, 0.0)) * 1000)
        headers = [(n, v) for n, v in self._raw_headers if n not in _RETRY_REPLACED]
        headers += self._origin()
        headers.append((ATTEMPT_HEADER, str(attempt).encode()))
        headers.append((DUE_HEADER, str(due).encode()))
        return Record(topic, self.body, self._raw_key, headers, self.attributes.get("id", ""))

    def _dead_letter_record(self, info: dict[str, str]) -> Record:
        """The dead-letter copy: body and key as received, the record's headers without
        any dead-letter or origin header, then `info`. If it would be larger than the
        dead-letter topic takes, the added headers are shortened (stack trace first); if
        even the record alone is too large, PublishError says so."""
        consumer = self._consumer
        spec = consumer.spec
        topic = dlq_topic(spec.stream, spec.group)
        dropped = _DEAD_LETTER_DROPPED | info.keys()
        kept = [(n, v) for n, v in self._raw_headers if n.lower() not in dropped]
        added = dict(info)
        label = self.attributes.get("id", "")
        record = Record(topic, self.body, self._raw_key, kept + _encoded(added), label)
        limit = consumer.dead_letter_limit
        if record_bytes(record) <= limit:
            return record
        note = f"shortened: the dead letter may not exceed {limit} bytes"
        for name, keep in _SHRINKABLE:
            value = added.get(name)
            if value and len(value) > keep:
                added[name] = f"{value[:keep]}... ({note})" if keep else f"({note})"
                record.headers = kept + _encoded(added)
                if record_bytes(record) <= limit:
                    return record
        key = len(self._raw_key) if self._raw_key is not None else 0
        raise PublishError(
            f"the dead letter of event {label or '?'} ({spec.stream}/{spec.group}) cannot "
            f"be stored: about {record_bytes(record)} bytes (body {len(self.body)}, key {key}, "
            f"headers {header_bytes(record.headers)}) is more than the {limit} bytes topic "
            f"{topic!r} takes (its max.message.bytes, and the producer's message.max.bytes); "
            "raise them"
        )


def _encoded(info: dict[str, str]) -> Headers:
    return [(name, value.encode()) for name, value in info.items()]


def _failed(future: asyncio.Future[None]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)
