"""Event <-> AMQP basic properties (the CloudEvents AMQP 0-9-1 binding, binary mode).

Outgoing: `ce-*` headers, `content_type` = datacontenttype, `message_id` = id, persistent.
Incoming: `eventbus.wire.from_amqp`, with the routing key as the type and `message_id` as
the id of messages from plain clients. Copies the adapter makes of a received message (a
delayed retry, a replayed dead letter) travel through the default exchange, so they carry
the routing key they first had in `x-eventbus-routing-key`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pamqp import commands as spec

from eventbus.broker import Message
from eventbus.wire import ATTEMPT_HEADER, to_amqp

ROUTING_KEY_HEADER = "x-eventbus-routing-key"
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
) -> spec.Basic.Properties:
    """Properties of a copy of a received message with new headers (user_id and expiration
    are dropped: the broker checks the one and the other would expire the copy)."""
    return spec.Basic.Properties(
        content_type=received.content_type,
        content_encoding=received.content_encoding,
        headers=dict(headers),
        delivery_mode=PERSISTENT,
        priority=received.priority,
        correlation_id=received.correlation_id,
        reply_to=received.reply_to,
        message_id=received.message_id or message_id,
        timestamp=received.timestamp,
        message_type=received.message_type,
        app_id=received.app_id,
    )


def routing_key_of(headers: Mapping[str, Any], delivered_routing_key: str | None) -> str | None:
    value = headers.get(ROUTING_KEY_HEADER)
    if value is None:
        return delivered_routing_key
    return value.decode() if isinstance(value, bytes) else str(value)


def retry_headers(
    headers: Mapping[str, Any], attributes: Mapping[str, str], routing_key: str | None,
    attempt: int,
) -> dict[str, Any]:
    """Headers of a delayed-retry copy: the original ones, the attempt, and the type and
    routing key made explicit (the copy is routed by queue name, not by type)."""
    copy = dict(headers)
    copy[ATTEMPT_HEADER] = attempt
    if "ce-type" not in copy and attributes.get("type"):
        copy["ce-type"] = attributes["type"]
    if routing_key is not None:
        copy[ROUTING_KEY_HEADER] = routing_key
    return copy
