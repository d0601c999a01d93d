"""A frame decoder that never gives up on a message because of what a producer put in it.

aiormq decodes every frame with pamqp, and pamqp raises on text that is not valid UTF-8 in
a short string (`message_id`, `content_type`, the routing key, ...) or in a header-table
name, on a timestamp out of `datetime`'s range, and (RecursionError) on header tables
nested thousands deep. RabbitMQ passes all of these through from any producer. A raise in
the frame decoder is fatal to the whole connection: every consumer and the publisher on
it drop, the broker redelivers the same message on the reconnection, and the loop never
ends. So the adapter installs tolerant decoders into pamqp (`install()`, once per
process, when the adapter is imported):

- a short string or table name that is not valid UTF-8 decodes with `surrogateescape`
  into an `Escaped` str (the bad bytes kept as lone surrogates, nothing lost), so a
  delivery needs one `type(value) is str` check per field to know it is clean;
- a header table holding such a name, a value that is bytes (pamqp's own fallback for a
  long string that is not valid UTF-8) or a byte array, or such a table nested in it,
  decodes into a `DubiousTable`, so a delivery needs one `type(headers) is dict` check to
  know whether it must look closer;
- a header table that cannot be decoded at all (nested too deep, malformed) is skipped
  whole (its length is known) and stands as an empty `DubiousTable` naming the problem;
- a timestamp out of range decodes as its raw integer;
- properties that still cannot be decoded leave the message with empty properties and a
  `DubiousTable` naming the problem as its headers.

Valid input decodes exactly as before, to the same types, at the same cost (the UTF-8
decode is attempted first). The adapter turns what is marked into `Delivery.defect`
(the pipeline dead-letters such a message at once with the reason), and `sanitized()`
makes a copy of such values that can be published again (dead letters, retries, replays):
escaped text becomes `\\xNN` escapes, bytes become byte arrays.

Other aio-pika users in the same process get the same tolerance: a message they could not
receive before (their connection died) now arrives with escaped strings. The checks
(`escaped`, `dubious`) go by "a subclass of str / dict", not by these classes, so a second
copy of this module (imported under another name) agrees with the one installed.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable
from typing import Any

from pamqp import commands, common, decode

from .limits import HEADER_NAME_MAX

_BYTE = common.Struct.byte
_INTEGER = common.Struct.integer
_TIMESTAMP = common.Struct.timestamp


class Escaped(str):
    """Text that was not valid UTF-8 on the wire: the invalid bytes are lone surrogates
    (`surrogateescape`), so `.encode("utf-8", "surrogateescape")` gives the wire bytes."""

    __slots__ = ()


class DubiousTable(dict[str, Any]):
    """A header table that needs a closer look (see the module docstring). `problem` is
    set when the table could not be decoded at all (it is then empty)."""

    __slots__ = ("problem",)

    def __init__(self, *args: Any, problem: str | None = None) -> None:
        super().__init__(*args)
        self.problem = problem


def escaped(value: object) -> bool:
    """Was this decoded from text that is not valid UTF-8 (an `Escaped`)?"""
    return type(value) is not str and isinstance(value, str)


def dubious(table: object) -> bool:
    """Does this header table need a closer look (a `DubiousTable`)?"""
    return type(table) is not dict and isinstance(table, dict)


def short_str(value: bytes) -> tuple[int, str]:
    try:
        length = _BYTE.unpack(value[0:1])[0]
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack short string value") from err
    raw = value[1 : length + 1]
    try:
        return length + 1, raw.decode("utf-8")
    except UnicodeDecodeError:
        return length + 1, Escaped(raw.decode("utf-8", "surrogateescape"))


def field_table(value: bytes) -> tuple[int, common.FieldTable]:
    """pamqp's `field_table`, with escaped names and the dubious mark. A text value (`S`,
    what every `ce-` header is) is read in place, as pamqp's `long_str` reads it; pamqp
    copies the rest of the frame twice for every entry."""
    embedded_value = decode.embedded_value
    unpack_byte = _BYTE.unpack_from
    unpack_uint = _INTEGER.unpack_from
    try:
        length = _INTEGER.unpack(value[0:4])[0]
        offset = 4
        data: dict[str, Any] = {}
        dubious = False
        end = offset + length
        if end > len(value):
            raise ValueError("Field table length exceeds available data")
        while offset < end:
            key_length = unpack_byte(value, offset)[0]
            offset += 1
            if offset + key_length > end:
                raise ValueError("Field table key length exceeds data")
            raw = value[offset : offset + key_length]
            try:
                key: str = raw.decode("utf-8")
            except UnicodeDecodeError:
                key = Escaped(raw.decode("utf-8", "surrogateescape"))
                dubious = True
            offset += key_length
            if value[offset : offset + 1] == b"S":  # text, the usual value: read in place
                size = unpack_uint(value, offset + 1)[0]  # struct.error: data ends early
                offset += 5
                raw = value[offset : offset + size]  # as pamqp: what is there of it
                result: common.FieldValue
                try:
                    result = raw.decode("utf-8")
                except UnicodeDecodeError:
                    result = raw  # pamqp's own fallback: the bytes
                offset += size
            else:
                consumed, result = embedded_value(value[offset:])
                offset += consumed
            kind = type(result)
            if (
                kind is not str
                and kind is not int
                and (kind is bytes or kind is bytearray or _dubious(result))
            ):
                dubious = True
            data[key] = result
        return end, (DubiousTable(data) if dubious else data)
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err


def top_field_table(value: bytes) -> tuple[int, common.FieldTable]:
    """A table that is a field of a frame (the `headers` property, method arguments):
    when it cannot be decoded, skip it whole and say why."""
    try:
        return field_table(value)
    except (ValueError, RecursionError, MemoryError) as exc:
        try:
            length = _INTEGER.unpack(value[0:4])[0]
        except struct.error:
            raise ValueError("Could not unpack data") from exc
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        return length + 4, DubiousTable(problem=f"the header table cannot be decoded: {reason}")


def timestamp(value: bytes) -> tuple[int, datetime.datetime | int]:
    try:
        raw = _TIMESTAMP.unpack(value[0:8])[0]
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack timestamp value") from err
    seconds = raw / 1000.0 if raw > 0xFFFFFFFF else raw  # pamqp: milliseconds, likely
    try:
        return 8, datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    except (ValueError, OverflowError, OSError):
        return 8, int(raw)


_dubious = dubious


def _tolerant_unmarshal(strict: Callable[[Any, int, bytes], None]) -> Any:
    def unmarshal(self: Any, flags: int, data: bytes) -> None:
        try:
            strict(self, flags, data)
        except Exception as exc:
            _undecodable(self, exc)

    unmarshal.__eventbus_tolerant__ = True  # type: ignore[attr-defined]
    return unmarshal


def _undecodable(properties: Any, exc: Exception) -> None:
    """Properties that cannot be decoded: all empty, and headers that say why."""
    for name in properties.__slots__:
        setattr(properties, name, None)
    properties.headers = DubiousTable(
        problem=f"the message properties cannot be decoded: {type(exc).__name__}: {str(exc)[:200]}"
    )


def install() -> None:
    """Put the tolerant decoders into pamqp (idempotent, also across copies of this
    module: the mark is on pamqp)."""
    if getattr(decode, "_eventbus_tolerant", False):
        return
    decode.short_str = short_str
    decode.METHODS["shortstr"] = short_str
    decode.field_table = field_table
    decode.TABLE_MAPPING[b"F"] = field_table
    decode.METHODS["table"] = top_field_table
    decode.timestamp = timestamp  # type: ignore[assignment]
    decode.METHODS["timestamp"] = timestamp
    decode.TABLE_MAPPING[b"T"] = timestamp
    properties = commands.Basic.Properties
    if not getattr(properties.unmarshal, "__eventbus_tolerant__", False):
        properties.unmarshal = _tolerant_unmarshal(properties.unmarshal)  # type: ignore[method-assign]
    decode._eventbus_tolerant = True  # type: ignore[attr-defined]


# --- making received values publishable again -------------------------------------------


def text(value: str, limit: int | None = None) -> str:
    """Valid text for a received str: escaped bytes become `\\xNN` (at most `limit`
    UTF-8 bytes, for short strings)."""
    if escaped(value) or not _encodable(value):
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if limit is not None:
        encoded = value.encode()
        if len(encoded) > limit:
            value = encoded[:limit].decode("utf-8", "ignore")
    return value


def _encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def sanitized(value: Any) -> tuple[Any, bool]:
    """-> (a header value pamqp can encode again, whether anything had to change).
    Text stays text (escaped where it was not valid UTF-8), bytes become a byte array
    (the same bytes), tables and arrays are sanitized throughout."""
    kind = type(value)
    if kind is str:
        if _encodable(value):
            return value, False
        return text(value), True
    if escaped(value):
        return text(value), True
    if kind is bytes:
        return bytearray(value), False
    if isinstance(value, dict):
        return sanitized_table(value)
    if isinstance(value, list):
        changed = False
        items = []
        for item in value:
            clean, was = sanitized(item)
            changed = changed or was
            items.append(clean)
        return items, changed
    return value, False


def sanitized_table(table: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    changed = getattr(table, "problem", None) is not None
    clean: dict[str, Any] = {}
    for key, value in table.items():
        name = key
        if escaped(key) or len(key) > 32 or not _encodable(key):
            name = text(key, HEADER_NAME_MAX)
            changed = changed or name != key
        clean[name], was = sanitized(value)
        changed = changed or was
    return clean, changed
