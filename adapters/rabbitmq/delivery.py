"""One received message as the kernel sees it, and its settlement on the broker.

Every delivery is counted against the queue attachment it came from until it is settled,
so a partition being handed over is released only once nothing of it is in flight.

Settling a delivery of a dead channel does nothing (its ack or reject would have no
channel to travel on; the broker redelivers the message).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from eventbus.broker import Delivery
from eventbus.wire import from_amqp

from .link import LOST
from .properties import copy_of, retry_headers, routing_key_of

if TYPE_CHECKING:
    from .attachment import Attachment
    from .consumer import GroupConsumer


class RabbitMQDelivery(Delivery):
    __slots__ = ("_attachment", "_consumer", "_message", "_open")

    def __init__(
        self, consumer: GroupConsumer, attachment: Attachment, message: DeliveredMessage
    ) -> None:
        props = message.header.properties
        headers: dict[str, Any] = props.headers or {}
        delivery = message.delivery
        routing_key = routing_key_of(headers, getattr(delivery, "routing_key", None))
        attributes, attempt = from_amqp(headers, props.content_type, props.message_id, routing_key)
        super().__init__(
            stream=consumer.topology.stream,
            body=message.body,
            attributes=attributes,
            headers=headers,
            key=attributes.get("partitionkey"),
            attempt=attempt,
            routing_key=routing_key,
            redelivered=bool(getattr(delivery, "redelivered", False)),
        )
        self._consumer = consumer
        self._attachment = attachment
        self._message = message
        self._open = True
        attachment.submitted()

    @property
    def _tag(self) -> int:
        tag = self._message.delivery.delivery_tag  # type: ignore[union-attr]
        return int(tag or 0)

    def _settled(self) -> None:
        if self._open:
            self._open = False
            self._attachment.settled()

    async def ack(self) -> None:
        try:
            channel = self._message.channel
            if channel.is_closed:
                self._consumer.dropped("ack", self)
                return
            try:
                await channel.basic_ack(self._tag, wait=False)
            except LOST:
                self._consumer.dropped("ack", self)
        finally:
            self._settled()

    async def nack(self) -> None:
        """Give the message back. While the consumer is stopping on a single-active-consumer
        queue it stays unacknowledged instead: closing the channel returns it together with
        everything behind it, in order, in the same step that lets the next consumer take
        over (a reject now could come back to this consumer behind later messages)."""
        try:
            channel = self._message.channel
            if channel.is_closed or self._consumer.returns_on_close:
                return
            with contextlib.suppress(*LOST):
                await channel.basic_reject(self._tag, requeue=True, wait=False)
        finally:
            self._settled()

    async def retry_later(self, attempt: int, delay: float) -> None:
        try:
            consumer = self._consumer
            queue = await consumer.wait_queue(attempt, delay)
            props = self._message.header.properties
            headers = retry_headers(self.headers, self.attributes, self.routing_key, attempt)
            await consumer.broker.publisher.send(
                "", queue, self.body, copy_of(props, headers, self.attributes.get("id"))
            )
            await self.ack()
        finally:
            self._settled()

    async def dead_letter(self, info: dict[str, str]) -> None:
        try:
            consumer = self._consumer
            props = self._message.header.properties
            headers = {**self.headers, **info}
            await consumer.broker.publisher.send(
                "", consumer.topology.dlq, self.body,
                copy_of(props, headers, self.attributes.get("id")),
            )
            await self.ack()
        finally:
            self._settled()
