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

from collections.abc import Callable, Mapping, Sized
from typing import Any

from eventbus.toolkit import (
    PublishError,
)

#: pamqp truncates longer table names (with a warning), so they are refused at publish
HEADER_NAME_MAX = 128
#: an AMQP short string (routing key, message_id, content_type, ...) holds at most this
SHORTSTR_MAX = 255

#: frame_max RabbitMQ offers by default (used until a connection negotiated one)
DEFAULT_FRAME_MAX = 131072
#: bytes of a content-header frame around the encoded properties (which include their
#: flags): frame header and end (8), class id, weight and body size (12)
CONTENT_HEADER_OVERHEAD = 20
#: the fixed-size properties, the flags and the length bytes of the short strings, bounded
_PROPERTIES_BOUND = 64
#: strings of at most this many characters are short strings whatever they hold (4 UTF-8
#: bytes a character at most)
_SAFE_CHARS = SHORTSTR_MAX // 4
_SAFE_NAME_CHARS = HEADER_NAME_MAX // 4


class HeadersTooLarge(PublishError):
    """The properties of a message do not fit in one AMQP frame (or a short string in them
    is over 255 bytes): the broker would close the connection over it."""


def check_publish(
    event_id: str | None,
    exchange: str,
    routing_key: str,
    headers: Mapping[str, Any] | None,
    short_strings: tuple[str | None, ...],
    frame_max: int,
    encode: Callable[[], Sized],
) -> None:
    """Raise `PublishError` if this publish cannot travel. `short_strings` are the
    short-string properties (message_id, content_type, ...); `encode()` encodes the
    properties (called only when the cheap bound is over the limit; it may raise for a
    value it cannot encode). On every publish: keep it cheap."""
    if len(routing_key) > _SAFE_CHARS:
        _short(event_id, "routing key (the event type)", routing_key)
    if len(exchange) > _SAFE_CHARS:
        _short(event_id, "exchange name (the stream)", exchange)
    chars = 0
    for value in short_strings:
        if value is not None:
            if len(value) > _SAFE_CHARS:
                _short(event_id, "message property", value)
            chars += len(value)
    room = frame_max - CONTENT_HEADER_OVERHEAD
    exact = False
    if headers:
        for name, value in headers.items():
            if len(name) > _SAFE_NAME_CHARS and len(name.encode()) > HEADER_NAME_MAX:
                raise HeadersTooLarge(
                    f"{_what(event_id)} cannot be published: header name {name[:60]!r}... "
                    f"is {len(name.encode())} bytes, over the {HEADER_NAME_MAX} an AMQP "
                    "table name may have here"
                )
            kind = type(value)
            if kind is str:
                chars += len(name) + len(value)
            elif kind is int or kind is bool or value is None:
                chars += len(name) + 2
            else:
                exact = True  # nested or binary: measured
        # 4 bytes a character at most, and per entry: name length, type, value length
        if not exact and 4 * chars + 10 * len(headers) + _PROPERTIES_BOUND <= room:
            return
    elif 4 * chars + _PROPERTIES_BOUND <= room:
        return
    try:
        size = len(encode())
    except Exception as exc:  # a value the client library cannot encode (too long, ...)
        raise HeadersTooLarge(f"{_what(event_id)} cannot be published: {exc}") from None
    if size > room:
        raise HeadersTooLarge(
            f"{_what(event_id)} cannot be published: its properties and headers (the key "
            f"and the CloudEvents attributes among them) take {size} bytes, more than the "
            f"{room} one AMQP frame leaves for them (frame_max {frame_max}, negotiated "
            "with RabbitMQ); use a shorter key or fewer, smaller headers"
        )


def _what(event_id: str | None) -> str:
    return f"event {event_id}"


def _short(event_id: str | None, field: str, value: str) -> None:
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > SHORTSTR_MAX:
        raise HeadersTooLarge(
            f"{_what(event_id)} cannot be published: its {field} {value[:60]!r}... is "
            f"{size} bytes; AMQP short strings hold at most {SHORTSTR_MAX}"
        )
