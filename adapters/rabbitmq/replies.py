"""Request/reply on RabbitMQ, with direct reply-to (`amq.rabbitmq.reply-to`).

Requester: requests are published on a channel of their own (a second `Publisher`:
confirms, `mandatory`, recovery and order as for any event), which consumes the
pseudo-queue `amq.rabbitmq.reply-to` in no-ack mode before anything is written on it
(`on_channel`, run on every channel the publisher opens, the first and every one after a
loss). A request carries `reply_to = amq.rabbitmq.reply-to` and `correlation_id` = its id;
the broker rewrites `reply_to` into the address of that channel
(`amq.rabbitmq.reply-to.<opaque>`), which the responder's delivery reads as the request's
`replyto` attribute (`RabbitMQDelivery`).

Responder: the reply is published through the broker's publisher to the default
exchange with routing key = that address, not mandatory (the broker treats a direct
reply-to name as no queue, so a mandatory reply always comes back) and not persistent.
It reaches the requester's channel if that channel is still open; otherwise the broker
drops it. So replies are at most once: one whose requester's channel closed (stopped,
restarted, connection lost) is lost, and its request times out.

Only direct reply-to addresses are replied to: a producer cannot make a responder write
into a queue of its choosing (a group's queue, say) by setting `reply_to`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from eventbus.toolkit import (
    IN_REPLY_TO,
    Message,
    PublishError,
    ReceiveReply,
    Reply,
    from_amqp,
    get_logger,
    to_amqp,
)

from .properties import outgoing
from .publisher import Publisher
from .tolerant import sanitized_table

if TYPE_CHECKING:
    from .link import Link
    from .settings import RabbitMQSettings

#: the pseudo-queue of direct reply-to, and the prefix of the addresses it stands for
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
_ADDRESS_PREFIX = DIRECT_REPLY_TO + "."
TRANSIENT = 1

_log = get_logger()


def is_reply_address(value: object) -> bool:
    """Is `value` an address the broker made of `amq.rabbitmq.reply-to`?"""
    return type(value) is str and value.startswith(_ADDRESS_PREFIX)


class RabbitMQReplyChannel:
    """The requesting side: a publisher of requests whose channel receives the replies."""

    address = DIRECT_REPLY_TO

    def __init__(
        self,
        link: Link,
        settings: RabbitMQSettings,
        shutdown_timeout: float,
        receive: ReceiveReply,
    ) -> None:
        self._receive = receive
        self._shutdown_timeout = shutdown_timeout
        self.publisher = Publisher(
            link,
            settings.confirm_window,
            settings.publish_timeout,
            mandatory=settings.mandatory,
            on_channel=self._consume,
        )

    async def _consume(self, channel: AbstractChannel) -> None:
        await channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, no_ack=True)

    async def _on_reply(self, message: DeliveredMessage) -> None:
        try:
            reply = _reply_of(message)
        except Exception as exc:  # a hostile reply: the kernel counts it as unmatched
            _log.warning("reply.undecodable", error=repr(exc)[:300])
            reply = Reply({}, bytes(message.body or b""))
        self._receive(reply)

    async def publish(self, message: Message) -> None:
        properties = outgoing(message)
        properties.reply_to = DIRECT_REPLY_TO
        properties.correlation_id = message.id or None
        await self.publisher.publish_to_stream(
            message.stream, message.type, message.body, properties
        )

    async def close(self) -> None:
        await self.publisher.flush(self._shutdown_timeout)
        await self.publisher.close()


def _reply_of(message: DeliveredMessage) -> Reply:
    props = message.header.properties
    headers, _escaped = sanitized_table(dict(props.headers or {}))
    attributes, _attempt = from_amqp(headers, _str(props.content_type), _str(props.message_id))
    if IN_REPLY_TO not in attributes:  # a plain AMQP responder answers by correlation_id
        correlation = _str(props.correlation_id)
        if correlation:
            attributes[IN_REPLY_TO] = correlation
    return Reply(attributes, bytes(message.body or b""))


def _str(value: Any) -> str | None:
    return value if type(value) is str else None


async def send_reply(publisher: Publisher, address: str, message: Message) -> None:
    """Publish a reply to a direct reply-to address (default exchange, confirmed, not
    mandatory: see the module docstring)."""
    if not is_reply_address(address):
        raise PublishError(
            f"reply address {address[:100]!r} is not a direct reply-to address "
            f"({_ADDRESS_PREFIX}...): not replied to"
        )
    headers, content_type = to_amqp(message.attributes)
    properties = spec.Basic.Properties(
        content_type=content_type,
        headers=headers,
        delivery_mode=TRANSIENT,
        message_id=message.id or None,
        correlation_id=message.attributes.get(IN_REPLY_TO) or None,
    )
    await publisher.send("", address, message.body, properties, mandatory=False)
