"""`KafkaDelivery`: one consumed record, settled by marking its offset finished, by a copy
on a retry topic, or by a copy on the dead-letter topic (each durable before the ack)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from eventbus.broker import Delivery
from eventbus.wire import ATTEMPT_HEADER

from .names import (
    DUE_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    dlq_topic,
    replay_topic,
    retry_topic,
)
from .producer import Headers, Record

if TYPE_CHECKING:
    from .consumer import KafkaConsumer, PartitionState

#: headers a retry copy replaces
_RETRY_REPLACED = frozenset({ATTEMPT_HEADER, DUE_HEADER})


class KafkaDelivery(Delivery):
    __slots__ = ("_consumer", "_offset", "_part", "_raw_headers", "_raw_key", "_settled")

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
    ) -> None:
        # slots set directly (no keyword pass-through): this runs once per record
        self.stream = stream
        self.body = body
        self.attributes = attributes
        self.headers = {}  # the raw record headers are kept in `_raw_headers`
        self.key = key
        self.attempt = attempt
        self.partition = partition
        self.offset = offset
        self.routing_key = None
        self.redelivered = False
        self._consumer = consumer
        self._part = part
        self._offset = record_offset
        self._raw_key = raw_key
        self._raw_headers = raw_headers
        self._settled = False

    def _settle(self, finished: bool) -> None:
        if not self._settled:
            self._settled = True
            self._consumer.settle(self._part, self._offset, finished)

    async def ack(self) -> None:
        self._settle(True)

    async def nack(self) -> None:
        self._settle(False)

    def _origin(self) -> Headers:
        """Origin headers to carry along: where this record first was in its stream."""
        names = {name for name, _ in self._raw_headers}
        if ORIGIN_PARTITION_HEADER in names or self.partition is None or self.offset is None:
            return []
        return [
            (ORIGIN_PARTITION_HEADER, str(self.partition).encode()),
            (ORIGIN_OFFSET_HEADER, str(self.offset).encode()),
        ]

    async def retry_later(self, attempt: int, delay: float) -> None:
        if self._settled:
            return
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
        record = Record(topic, self.body, self._raw_key, headers, self.attributes.get("id", ""))
        await self._consumer.producer.send(record)
        self._settle(True)

    async def dead_letter(self, info: dict[str, str]) -> None:
        if self._settled:
            return
        spec = self._consumer.spec
        headers = [(n, v) for n, v in self._raw_headers if n not in info]
        headers += [(name, value.encode()) for name, value in info.items()]
        record = Record(
            dlq_topic(spec.stream, spec.group),
            self.body,
            self._raw_key,
            headers,
            self.attributes.get("id", ""),
        )
        await self._consumer.producer.send(record)
        self._settle(True)
