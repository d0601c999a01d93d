"""A foreign producer that writes message properties byte by byte.

pika sends the properties it gets from `BasicProperties.encode()`; `RawProperties` hands
it bytes built here instead, so a test can put on the wire what no well-behaved client
would: a `message_id` or header name that is not valid UTF-8, a long-string header value
that is not valid UTF-8 (pika writes bytes as a byte array), a timestamp out of range,
tables nested deeper than a decoder recurses. pika takes bytes for the routing key as they
are.
"""

from __future__ import annotations

import struct
from typing import Any

import pika

from .support import raw_connection

FLAG_CONTENT_TYPE = 1 << 15
FLAG_HEADERS = 1 << 13
FLAG_DELIVERY_MODE = 1 << 12
FLAG_MESSAGE_ID = 1 << 7
FLAG_TIMESTAMP = 1 << 6


def shortstr(value: bytes) -> bytes:
    assert len(value) <= 255
    return struct.pack(">B", len(value)) + value


def longstr(value: bytes) -> bytes:
    """A header value of type `S` (long string), the bytes as given."""
    return b"S" + struct.pack(">I", len(value)) + value


def table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A field table of (name, encoded value) pairs, names as given."""
    body = b"".join(shortstr(name) + value for name, value in entries)
    return struct.pack(">I", len(body)) + body


def nested_table(depth: int) -> bytes:
    """A header value: a table holding a table ... `depth` deep."""
    value = b"F" + table([])
    for _ in range(depth):
        value = b"F" + table([(b"n", value)])
    return value


class RawProperties(pika.BasicProperties):
    """Properties pika sends exactly as encoded here."""

    def __init__(
        self,
        *,
        message_id: bytes | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        content_type: bytes | None = None,
        timestamp: int | None = None,
    ) -> None:
        super().__init__()
        flags = FLAG_DELIVERY_MODE
        pieces: list[bytes] = []
        if content_type is not None:
            flags |= FLAG_CONTENT_TYPE
            pieces.append(shortstr(content_type))
        if headers is not None:
            flags |= FLAG_HEADERS
            pieces.append(table(headers))
        pieces.append(struct.pack(">B", 2))  # persistent
        if message_id is not None:
            flags |= FLAG_MESSAGE_ID
            pieces.append(shortstr(message_id))
        if timestamp is not None:
            flags |= FLAG_TIMESTAMP
            pieces.append(struct.pack(">Q", timestamp))
        self._raw = [struct.pack(">H", flags), *pieces]

    def encode(self) -> list[bytes]:
        return list(self._raw)


def publish(exchange: str, routing_key: str | bytes, body: bytes, properties: Any = None) -> None:
    """One confirmed publish on a connection of its own."""
    connection = raw_connection()
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, routing_key, body, properties)  # type: ignore[arg-type]
    finally:
        connection.close()
