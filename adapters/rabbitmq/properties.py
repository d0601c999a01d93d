"""Event <-> AMQP basic properties (the CloudEvents AMQP 0-9-1 binding, binary mode).

Outgoing: `ce-*` headers, `content_type` = datacontenttype, `message_id` = id, persistent.
Incoming: `eventbus.wire.from_amqp`, with the routing key as the type and `message_id` as
the id of messages from plain clients. Copies the adapter makes of a received message (a
delayed retry, a replayed dead letter, an id-less message stamped with an id) travel
through the default exchange, so they carry the routing key they first had in
`x-eventbus-routing-key` (read only from messages that came back through the group's own
channels: see `RabbitMQDelivery`).

Copies are made of whatever a producer sent, so `copy_of` makes every value publishable
again (`tolerant.sanitized`).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from pamqp import commands as spec

from eventbus.toolkit import (
    ATTEMPT_HEADER,
    Message,
    to_amqp,
)

from .limits import SHORTSTR_MAX
from .tolerant import Escaped, sanitized_table, text

ROUTING_KEY_HEADER = "x-eventbus-routing-key"
#: transport bookkeeping only the adapter writes (any case of these names is replaced)
BOOKKEEPING = frozenset((ATTEMPT_HEADER, ROUTING_KEY_HEADER))
PERSISTENT = 2


def outgoing(message: Message) -> spec.Basic.Properties:
    headers, content_type = to_amqp(message.attributes, message.attempt)
    return spec.Basic.Properties(
        content_type=content_type,
        headers=headers,
        delivery_mode=PERSISTENT,
        message_id=message.attributes.get("id") or None,
    )


def copy_of(
    received: spec.Basic.Properties,
    headers: Mapping[str, Any],
    message_id: str | None,
    *,
    encodable: bool = False,
) -> spec.Basic.Properties:
    """Properties of a copy of a received message with new headers (user_id and expiration
    are dropped: the broker checks the one and the other would expire the copy). Text
    that was not valid UTF-8 is escaped, bytes become byte arrays, a timestamp out of
    range is dropped: the copy can always be encoded. `encodable`: the headers are known
    to encode as they are (taken from a table that was not `dubious`)."""
    clean = dict(headers) if encodable else sanitized_table(dict(headers))[0]
    stamp = received.timestamp
    return spec.Basic.Properties(
        content_type=_short(received.content_type),
        content_encoding=_short(received.content_encoding),
        headers=clean,
        delivery_mode=PERSISTENT,
        priority=received.priority if type(received.priority) is int else None,
        correlation_id=_short(received.correlation_id),
        reply_to=_short(received.reply_to),
        message_id=_short(received.message_id or message_id),
        timestamp=stamp if isinstance(stamp, datetime.datetime) else None,
        message_type=_short(received.message_type),
        app_id=_short(received.app_id),
    )


def _short(value: str | None) -> str | None:
    if value is None or (type(value) is str and value.isascii() and len(value) <= SHORTSTR_MAX):
        return value
    return text(value, SHORTSTR_MAX)


def routing_key_of(headers: Mapping[str, Any], delivered_routing_key: str | None) -> str | None:
    """The routing key a message was first published with: the header a copy carries,
    else the routing key it was delivered with. Only for messages from the group's own
    channels (anyone can write the header)."""
    value = headers.get(ROUTING_KEY_HEADER)
    if value is None:
        return delivered_routing_key
    if type(value) is str:
        return value
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return Escaped(raw.decode("utf-8", "surrogateescape"))
    return str(value)


def retry_headers(
    headers: Mapping[str, Any],
    attributes: Mapping[str, str],
    routing_key: str | None,
    attempt: int,
) -> dict[str, Any]:
    """Headers of a delayed-retry copy: the original ones, the attempt, and the type and
    routing key made explicit (the copy is routed by queue name, not by type)."""
    copy = {k: v for k, v in headers.items() if k.lower() not in BOOKKEEPING}
    copy[ATTEMPT_HEADER] = attempt
    if "ce-type" not in copy and attributes.get("type"):
        copy["ce-type"] = attributes["type"]
    if routing_key is not None:
        copy[ROUTING_KEY_HEADER] = routing_key
    return copy
