"""What fits in one AMQP publish, checked before anything is sent.

A routing key, exchange name or other short string over 255 bytes cannot be encoded, and a
content header (the properties with the header table) larger than the negotiated
`frame_max` makes RabbitMQ close the whole connection (FRAME_ERROR): every publish in
flight on it would be re-sent, and the oversized one fail again, until the publish
timeout. So both faces check first and raise `PublishError` at once, naming the limit.

The check is cheap for ordinary events: an upper bound of the encoded size from string
lengths (at most 4 UTF-8 bytes a character) and, only when that bound comes near the
limit, the exact size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from eventbus.errors import PublishError

#: pamqp truncates longer table names (with a warning), so they are refused at publish
HEADER_NAME_MAX = 128
#: an AMQP short string (routing key, message_id, content_type, ...) holds at most this
SHORTSTR_MAX = 255

#: frame_max RabbitMQ offers by default (used until a connection negotiated one)
DEFAULT_FRAME_MAX = 131072
#: bytes of a content-header frame around the encoded properties (which include their
#: flags): frame header and end (8), class id, weight and body size (12)
CONTENT_HEADER_OVERHEAD = 20
#: a property that is a short string or a fixed-size field, bounded generously
_PROPERTY_BOUND = 4 * 64


class HeadersTooLarge(PublishError):
    """The properties of a message do not fit in one AMQP frame (or a short string in them
    is over 255 bytes): the broker would close the connection over it."""


def check_publish(
    what: str,
    exchange: str,
    routing_key: str,
    headers: Mapping[str, Any] | None,
    short_strings: tuple[str | None, ...],
    frame_max: int,
    encoded_size: Callable[[], int],
) -> None:
    """Raise `PublishError` if this publish cannot travel: `what` names the message in the
    error; `short_strings` are the short-string properties (message_id, content_type,
    ...); `encoded_size()` gives the exact size of the encoded properties (called only
    when the cheap bound is over the limit; it may raise for a value it cannot encode)."""
    if len(routing_key) * 4 > SHORTSTR_MAX:
        _short(what, "routing key (the event type)", routing_key)
    if len(exchange) * 4 > SHORTSTR_MAX:
        _short(what, "exchange name (the stream)", exchange)
    room = frame_max - CONTENT_HEADER_OVERHEAD
    bound = 0
    for value in short_strings:
        if value is not None:
            if len(value) * 4 > SHORTSTR_MAX:
                _short(what, "message property", value)
            bound += 4 * len(value) + 1
    bound += _PROPERTY_BOUND
    if headers:
        for name, value in headers.items():
            if len(name) * 4 > HEADER_NAME_MAX and len(name.encode()) > HEADER_NAME_MAX:
                raise HeadersTooLarge(
                    f"{what} cannot be published: header name {name[:60]!r}... is "
                    f"{len(name.encode())} bytes, over the {HEADER_NAME_MAX} an AMQP table "
                    "name may have here"
                )
            kind = type(value)
            if kind is str:
                bound += 4 * (len(name) + len(value)) + 6
            elif kind is int or kind is bool or value is None:
                bound += 4 * len(name) + 10
            else:
                bound = room + 1  # nested or binary: measure exactly
    if bound <= room:
        return
    try:
        size = encoded_size()
    except Exception as exc:  # a value the client library cannot encode (too long, ...)
        raise HeadersTooLarge(f"{what} cannot be published: {exc}") from None
    if size > room:
        raise HeadersTooLarge(
            f"{what} cannot be published: its properties and headers (the key and the "
            f"CloudEvents attributes among them) take {size} bytes, more than the {room} "
            f"one AMQP frame leaves for them (frame_max {frame_max}, negotiated with "
            "RabbitMQ); use a shorter key or fewer, smaller headers"
        )


def _short(what: str, field: str, value: str) -> None:
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > SHORTSTR_MAX:
        raise HeadersTooLarge(
            f"{what} cannot be published: its {field} {value[:60]!r}... is {size} bytes; "
            f"AMQP short strings hold at most {SHORTSTR_MAX}"
        )
