"""One received message as the kernel sees it, and its settlement on the broker.

Every delivery is counted against the queue attachment it came from until it is settled,
so a partition being handed over is released only once nothing of it is in flight.

Settling a delivery of a dead channel does nothing (its ack or reject would have no
channel to travel on; the broker redelivers the message). For the same reason a dead
letter or delayed retry whose channel closes before the copy is stored gives up: the
broker redelivers the original, and a copy stored now would be a duplicate.

Trust: the attempt count (`x-eventbus-attempt`) and the first routing key
(`x-eventbus-routing-key`) are transport bookkeeping, read only from messages that came
back through the group's own channels. The broker tells which: a message published to the
stream is delivered with the stream's exchange, while the group's wait queues dead-letter
into the default exchange (or the partitioned group's route exchange), and replays and
id stamps are published there too (`GroupConsumer.trusted_exchanges`). Headers can be
forged by any producer (`x-death` too); the exchange a message was delivered through
cannot. A forged attempt on the stream itself counts as attempt 1.

Decoding never fails a delivery: what a producer sent that is not valid text (see
`tolerant`) becomes `defect`, and the pipeline dead-letters such a message at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage

from eventbus.toolkit import (
    DEAD_LETTER_HEADERS,
    REPLY_TO,
    Delivery,
    from_amqp,
)

from .limits import HeadersTooLarge
from .link import LOST
from .properties import BOOKKEEPING, copy_of, retry_headers, routing_key_of
from .replies import is_reply_address
from .tolerant import dubious, escaped, sanitized_table, text

if TYPE_CHECKING:
    from .attachment import Attachment
    from .consumer import GroupConsumer

#: headers a dead-letter copy never takes over from the message (the kernel's `info`
#: and the adapter's bookkeeping are written fresh); compared lower-case
_NOT_COPIED = frozenset(name.lower() for name in (*DEAD_LETTER_HEADERS, *BOOKKEEPING))
_ESCAPED_NOTE = (
    " [bytes that were not valid UTF-8 are written as \\xNN escapes in this dead letter's "
    "copy of the properties and headers]"
)


class RabbitMQDelivery(Delivery):
    __slots__ = ("_attachment", "_consumer", "_message", "_open")

    def __init__(
        self, consumer: GroupConsumer, attachment: Attachment, message: DeliveredMessage
    ) -> None:
        props = message.header.properties
        # (not `or {}`: an empty DubiousTable says why it is empty)
        headers: dict[str, Any] = {} if props.headers is None else props.headers
        delivery: Any = message.delivery
        routing_key = delivery.routing_key
        trusted = delivery.exchange in consumer.trusted_exchanges
        if trusted:
            routing_key = routing_key_of(headers, routing_key)
        message_id = props.message_id
        content_type = props.content_type
        if (
            type(headers) is dict
            and type(routing_key) is str
            and (message_id is None or type(message_id) is str)
            and (content_type is None or type(content_type) is str)
        ):
            attributes, attempt = from_amqp(headers, content_type, message_id, routing_key)
            defect = None
        else:
            attributes, attempt, defect = _inspect(headers, content_type, message_id, routing_key)
        if not trusted:
            attempt = 1
        reply_to = props.reply_to
        if reply_to is not None and is_reply_address(reply_to):  # a request: reply there
            attributes[REPLY_TO] = reply_to
        Delivery.__init__(  # positional: this runs once per message
            self,
            consumer.topology.stream,
            message.body,
            attributes,
            headers,
            attributes.get("partitionkey"),
            attempt,
            None,
            None,
            routing_key,
            bool(delivery.redelivered),
            defect,
        )
        self._consumer = consumer
        self._attachment = attachment
        self._message = message
        self._open = True
        attachment.submitted()

    @classmethod
    def undecodable(
        cls,
        consumer: GroupConsumer,
        attachment: Attachment,
        message: DeliveredMessage,
        error: BaseException,
    ) -> RabbitMQDelivery:
        """A delivery whose decoding failed in a way nobody foresaw: handed to the kernel
        anyway, with the error as its defect (it is dead-lettered, body intact)."""
        self = cls.__new__(cls)
        routing_key = getattr(message.delivery, "routing_key", None)
        Delivery.__init__(
            self,
            stream=consumer.topology.stream,
            body=bytes(message.body or b""),
            attributes={},
            headers={},
            routing_key=text(routing_key) if isinstance(routing_key, str) else None,
            defect=f"the message cannot be decoded: {error!r}"[:500],
        )
        self._consumer = consumer
        self._attachment = attachment
        self._message = message
        self._open = True
        attachment.submitted()
        return self

    @property
    def _tag(self) -> int:
        tag = self._message.delivery.delivery_tag  # type: ignore[union-attr]
        return int(tag or 0)

    @property
    def message_channel(self) -> Any:
        """The channel the message came on (its ack travels there)."""
        return self._message.channel

    @property
    def message_properties(self) -> Any:
        return self._message.header.properties

    def _settled(self) -> None:
        if self._open:
            self._open = False
            self._attachment.settled()

    async def ack(self) -> None:
        """Coalesced with the other acks of this loop turn (see `attachment`)."""
        try:
            if self._message.channel.is_closed:
                self.dropped("ack")
            elif self._open:
                self._attachment.ack(self._tag, self)
        finally:
            self._settled()

    def dropped(self, what: str) -> None:
        self._consumer.dropped(what, self)

    async def write(self, method: Any, tag: int, **options: Any) -> bool:
        """Send an ack or reject (without waiting for the socket). -> False if the
        connection was lost first. aiormq queues frames in a small bounded queue: when it
        is full, this waits for room, and only the connection's loss ends a wait on a
        connection whose writer is gone (`Link.blocked`)."""
        channel: Any = self._message.channel
        if not channel.write_queue.full():  # the common case: no wait at all
            await method(tag, wait=False, **options)
            return True
        if channel.connection.is_closed:
            return False
        blocked = self._consumer.broker.link.blocked
        try:
            async with asyncio.timeout(None) as timeout:
                blocked.add(timeout)
                try:
                    await method(tag, wait=False, **options)
                finally:
                    blocked.discard(timeout)
        except TimeoutError:
            return False
        return True

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
                await self.write(channel.basic_reject, self._tag, requeue=True)
            self._attachment.forget(self._tag)  # written: acks above it may go as one
        finally:
            self._settled()

    # --- copies: delayed retry, dead letter --------------------------------------------
    # Each stores a confirmed copy, then acks. On failure they raise (the kernel tries
    # again with backoff, or nacks when stopping) and the delivery stays unsettled, so a
    # later call starts over; once settled, further calls do nothing.

    async def retry_later(self, attempt: int, delay: float) -> None:
        if not self._open:
            return
        consumer = self._consumer
        queue = await consumer.wait_queue(attempt, delay)
        headers = retry_headers(self.headers, self.attributes, self.routing_key, attempt)
        properties = copy_of(self._message.header.properties, headers, self.attributes.get("id"))
        if await consumer.store_copy(self, queue, properties, "delayed retry", delay=delay):
            await self.ack()

    async def dead_letter(self, info: dict[str, str]) -> None:
        if not self._open:
            return
        consumer = self._consumer
        kept = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_COPIED}
        clean, escaped = sanitized_table(kept)
        origin, escaped_info = sanitized_table(info)
        if escaped or escaped_info or _escaped_properties(self._message):
            message = origin.get("x-exception-message", "")
            origin["x-exception-message"] = message + _ESCAPED_NOTE
        received = self._message.header.properties
        message_id = self.attributes.get("id")
        stored = None
        # too large for a frame with the stack trace (the message came in near the limit):
        # without it; then with the CloudEvents headers only
        for attempt in range(3):
            headers = {**clean, **origin}
            if attempt >= 1:
                headers["x-exception-stacktrace"] = "(left out: the headers would not fit)"
            if attempt == 2:
                headers = {
                    k: v
                    for k, v in headers.items()
                    if k.startswith("ce-") or k.lower() in _NOT_COPIED
                }
            try:
                stored = await consumer.store_copy(
                    self,
                    consumer.topology.dlq,
                    copy_of(received, headers, message_id),
                    "dead letter",
                )
                break
            except HeadersTooLarge:
                if attempt == 2:
                    raise
        if stored:
            await self.ack()

    def dropped_copy(self, what: str) -> None:
        """The channel closed before the copy was stored: the broker redelivers."""
        self._consumer.dropped(what, self)
        self._settled()


def _inspect(
    headers: dict[str, Any], content_type: Any, message_id: Any, routing_key: Any
) -> tuple[dict[str, str], int, str | None]:
    """The slow path of decoding: something in this message is not valid text (or the
    headers could not be decoded at all). -> (attributes, attempt, defect)."""
    reasons: list[str] = []
    if escaped(routing_key):
        reasons.append(f"the routing key (the event type) '{text(routing_key)}' is not valid UTF-8")
    if escaped(message_id):
        reasons.append(f"message_id '{text(message_id)}' is not valid UTF-8")
    if escaped(content_type):
        reasons.append(f"content_type '{text(content_type)}' is not valid UTF-8")
    table: dict[str, Any] = headers
    if dubious(headers):
        problem = getattr(headers, "problem", None)
        if problem:
            reasons.append(problem)
        table = {}
        for name, value in headers.items():
            if escaped(name):
                reasons.append(f"header name '{text(name)}' is not valid UTF-8")
            # a byte array (pika writes bytes so) in a CloudEvents header is text too
            table[name] = bytes(value) if type(value) is bytearray else value
    defects: list[str] = []
    attributes, attempt = from_amqp(
        table,
        text(content_type) if content_type is not None else None,
        text(message_id) if message_id is not None else None,
        text(routing_key) if routing_key is not None else None,
        defects,
    )
    reasons += defects
    return attributes, attempt, "; ".join(reasons) or None


def _escaped_properties(message: DeliveredMessage) -> bool:
    props = message.header.properties
    for name in (
        "content_type",
        "content_encoding",
        "correlation_id",
        "reply_to",
        "message_id",
        "message_type",
        "app_id",
    ):
        if escaped(getattr(props, name, None)):
            return True
    return escaped(getattr(message.delivery, "routing_key", None))
