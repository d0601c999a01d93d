"""CloudEvents 1.0 binary content mode, as the CloudEvents Python SDK writes and reads it.

Kafka: attributes as `ce_<name>` headers, `datacontenttype` as `content-type`, record key =
partition key. RabbitMQ (AMQP 0-9-1 binding): `ce-<name>` headers, `datacontenttype` in the
`content_type` property, `message_id` = id, routing key = type. Attempt bookkeeping travels
in `x-eventbus-attempt`. Pure functions: no broker client is imported here.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

ATTEMPT_HEADER = "x-eventbus-attempt"
KAFKA_PREFIX = "ce_"
AMQP_PREFIX = "ce-"
KAFKA_CONTENT_TYPE = "content-type"


class _Clock:
    """UTC time as the SDK writes it, made cheap enough to call on every publish: the
    text is made once per millisecond, and its date and time of day once per second
    (`datetime.isoformat(timespec=...)` costs several microseconds: at a publish or two
    per millisecond, every publish would pay it). Each cache is one tuple, replaced
    whole, so threads calling at once never see a time of one moment with the text of
    another."""

    __slots__ = ("last", "second")

    def __init__(self) -> None:
        #: (unix milliseconds, its text)
        self.last = (-1, "")
        #: (unix seconds, its date and time of day)
        self.second = (-1, "")

    def now(self) -> str:
        ms = time.time_ns() // 1_000_000
        last = self.last
        if last[0] == ms:
            return last[1]
        second, millis = divmod(ms, 1000)
        cached = self.second
        if cached[0] == second:
            whole = cached[1]
        else:
            whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.second = (second, whole)
        stamp = f"{whole}.{millis:03d}Z"
        self.last = (ms, stamp)
        return stamp


#: UTC time as the SDK writes it: ISO 8601 (RFC 3339) with a `Z` suffix, millisecond
#: precision, e.g. `2026-12-01T11:02:35.123Z` (a bound method: it is on every publish)
now_rfc3339 = _Clock().now


_LOW48 = (1 << 48) - 1
_BIT48 = 1 << 48


class _Ids:
    """Version-4-shaped UUIDs, unique without a system call per id: 62 random bits drawn
    once per process (again in every forked child) and a 62-bit counter that starts at a
    random value. Ids of one process sort by creation within the counter's range."""

    def __init__(self) -> None:
        self.reset()
        if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
            os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        rand = secrets.randbits(128)
        self.prefix = f"{rand >> 96:08x}-{(rand >> 80) & 0xFFFF:04x}-4{(rand >> 68) & 0xFFF:03x}"
        self.counter = itertools.count(rand & ((1 << 62) - 1))
        self._head(next(self.counter))

    def _head(self, n: int) -> None:
        """The fixed part of the ids up to the next change of the counter's high bits."""
        self.head = "%s-%04x-" % (self.prefix, 0x8000 | ((n >> 48) & 0x3FFF))  # noqa: UP031
        self.limit = (n | _LOW48) + 1

    def next(self) -> str:
        n = next(self.counter)
        if n >= self.limit:  # once per 2**48 ids
            self._head(n)
        # hex() of the low 48 bits with bit 48 set: "0x1" + exactly 12 digits, zero-padded
        # (a third cheaper than formatting with a width: this runs on every publish)
        return self.head + hex((n & _LOW48) | _BIT48)[3:]


_ids = _Ids()
#: a new event id (a bound method: cheaper to call than an instance's `__call__`)
new_id = _ids.next

#: namespace of the ids derived for id-less foreign events
_DERIVED = uuid.UUID("5f1c3c9e-8d0b-4c55-9f65-0e7a3c1d2b4a")


def derived_id(*coordinates: object) -> str:
    """A stable event id for an event that arrived without one (a plain client's JSON),
    from where the broker keeps it (e.g. `"kafka", topic, partition, offset`): the same
    coordinates give the same id on every redelivery, different ones never collide."""
    return str(uuid.uuid5(_DERIVED, "\x1f".join(str(c) for c in coordinates)))


def _strict_text(value: bytes, name: str, defects: list[str] | None) -> str:
    """UTF-8 text of a header value; invalid bytes are replaced and, when `defects` is
    given, the field is named there (the pipeline dead-letters such a delivery)."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        if defects is not None:
            defects.append(f"{name} is not valid UTF-8")
        return value.decode("utf-8", "replace")


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def parse_attempt(value: Any) -> int:
    """Attempt header value -> int >= 1 (garbage counts as 1: bad input never crashes)."""
    if value is None:
        return 1
    try:
        attempt = int(_text(value))
    except ValueError:
        return 1
    return attempt if attempt >= 1 else 1


# --- Kafka -----------------------------------------------------------------------------


# fmt: off
_KAFKA_NAMES: dict[str, str] = {
    **{
        name: KAFKA_PREFIX + name
        for name in (
            "id", "source", "specversion", "type", "time", "dataschema", "correlationid",
            "causationid",
        )
    },
    "datacontenttype": KAFKA_CONTENT_TYPE,
}
# fmt: on


def _kafka_name(attribute: str) -> str:
    name = _KAFKA_NAMES.get(attribute)
    if name is None:
        name = KAFKA_PREFIX + attribute
        if len(_KAFKA_NAMES) < 4096:  # extension names are the users'; never grow unbounded
            _KAFKA_NAMES[attribute] = name
    return name


def to_kafka_headers(attributes: Mapping[str, str], attempt: int = 1) -> list[tuple[str, str]]:
    """CloudEvents attributes -> Kafka record headers. The values stay `str`: confluent-kafka
    writes them as UTF-8 in C, cheaper than a Python `encode()` per header (this runs per
    published record); records read back carry them as bytes."""
    names = _KAFKA_NAMES
    try:  # the attribute names are almost always known
        headers = [
            (names[name], value)
            for name, value in attributes.items()
            if name != "partitionkey"  # the record key carries it (the SDK reads it there)
        ]
    except KeyError:
        headers = [
            (_kafka_name(name), value)
            for name, value in attributes.items()
            if name != "partitionkey"
        ]
    if attempt > 1:
        headers.append((ATTEMPT_HEADER, str(attempt)))
    return headers


_ATTEMPT = "\x00attempt"
#: Kafka header name -> CloudEvents attribute ("" = not ours, _ATTEMPT = attempt count)
_KAFKA_ATTRS: dict[str, str] = {}


def _kafka_attr(header: str) -> str:
    lowered = header.lower()
    if lowered.startswith(KAFKA_PREFIX):
        attr = lowered[len(KAFKA_PREFIX) :]
    elif lowered == KAFKA_CONTENT_TYPE:
        attr = "datacontenttype"
    elif lowered == ATTEMPT_HEADER:
        attr = _ATTEMPT
    else:
        attr = ""
    if len(_KAFKA_ATTRS) < 4096:  # header names are few; never grow without bound
        _KAFKA_ATTRS[header] = attr
    return attr


def from_kafka_headers(
    headers: Sequence[tuple[str, Any]] | None,
    key: bytes | str | None,
    defects: list[str] | None = None,
) -> tuple[dict[str, str], int]:
    """Kafka record headers + key -> (CloudEvents attributes, attempt). Runs per record.

    With `defects`, every header (or the key) that is not valid UTF-8 is named there.
    `headers` is a sequence: a record the quick pass cannot read is read again."""
    names = _KAFKA_ATTRS
    try:  # the usual record: header names seen before, UTF-8 values (one comprehension)
        attributes = {names[name]: value.decode() for name, value in headers or ()}
    except (KeyError, AttributeError, UnicodeDecodeError):  # a new name, None, bad UTF-8
        attributes, attempt = _kafka_attributes(headers or (), defects)
    else:
        attempt = parse_attempt(attributes.pop(_ATTEMPT)) if _ATTEMPT in attributes else 1
        attributes.pop("", None)  # headers that are not ours
    if key is not None:
        if type(key) is not bytes:
            attributes["partitionkey"] = _text(key)
        else:
            try:
                attributes["partitionkey"] = key.decode()
            except UnicodeDecodeError:
                attributes["partitionkey"] = _strict_text(key, "record key", defects)
    return attributes, attempt


def _kafka_attributes(
    headers: Sequence[tuple[str, Any]], defects: list[str] | None
) -> tuple[dict[str, str], int]:
    """`from_kafka_headers` header by header: learns new names, tolerates None values
    and names each header that is not valid UTF-8 in `defects`."""
    attributes: dict[str, str] = {}
    attempt = 1
    names = _KAFKA_ATTRS
    for name, value in headers:
        attr = names.get(name)
        if attr is None:
            attr = _kafka_attr(name)
        if not attr:
            continue
        if attr is _ATTEMPT:
            attempt = parse_attempt(value)
        elif type(value) is bytes:
            try:
                attributes[attr] = value.decode()
            except UnicodeDecodeError:
                attributes[attr] = _strict_text(value, f"header {name!r}", defects)
        else:
            attributes[attr] = _text(value) if value is not None else ""
    return attributes, attempt


# --- RabbitMQ (AMQP 0-9-1) ---------------------------------------------------------------


def to_amqp(attributes: Mapping[str, str], attempt: int = 1) -> tuple[dict[str, Any], str | None]:
    """-> (headers, content_type). `message_id` is `attributes['id']`."""
    headers: dict[str, Any] = {}
    content_type = None
    for name, value in attributes.items():
        if name == "datacontenttype":
            content_type = value
        else:
            headers[AMQP_PREFIX + name] = value
    if attempt > 1:
        headers[ATTEMPT_HEADER] = attempt
    return headers, content_type


def from_amqp(
    headers: Mapping[str, Any] | None,
    content_type: str | None,
    message_id: str | None = None,
    routing_key: str | None = None,
    defects: list[str] | None = None,
) -> tuple[dict[str, str], int]:
    """AMQP headers + properties -> (CloudEvents attributes, attempt).

    A message from a plain client (no `ce-` headers) still decodes: its type is the routing
    key and its id the `message_id` property. With `defects`, every `ce-` header whose
    value is not valid UTF-8 is named there.
    """
    attributes: dict[str, str] = {}
    attempt = 1
    for name, value in (headers or {}).items():
        lowered = name.lower()
        if lowered.startswith(AMQP_PREFIX):
            attributes[lowered[3:]] = (
                _strict_text(value, f"header {name!r}", defects)
                if type(value) is bytes
                else _text(value)
            )
        elif lowered == ATTEMPT_HEADER:
            attempt = parse_attempt(value)
    if content_type:
        attributes["datacontenttype"] = content_type
    if "id" not in attributes and message_id:
        attributes["id"] = message_id
    if "type" not in attributes and routing_key:
        attributes["type"] = routing_key
    return attributes, attempt


def header_text(headers: Mapping[str, Any]) -> dict[str, str]:
    """Any broker's header map -> str values (for dead-letter listings and logs)."""
    return {k: _text(v) for k, v in headers.items() if v is not None}
