"""Events into outgoing `Message`s (and back into the `Envelope` the publisher gets): one
place for the async and sync faces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import MessageTooLarge
from .event import Envelope, Event, schema_id, validate_extension
from .protocol import Message
from .wire import new_id, now_rfc3339

#: per class: (stream, type, serializer, dataschema), computed once
_ClassInfo = tuple[str, str, Callable[[Event], bytes], str]
_CLASSES: dict[type[Event], _ClassInfo] = {}


def _class_info(cls: type[Event]) -> _ClassInfo:
    if not cls.__event_type__ or not cls.__stream__:
        raise TypeError(
            f"{cls.__name__} has no stream/type: declare "
            f"class {cls.__name__}(Event, stream='...', type='...')"
        )
    stream, etype = cls.__stream__, cls.__event_type__
    info = (stream, etype, cls.__pydantic_serializer__.to_json, schema_id(stream, etype))
    _CLASSES[cls] = info
    return info


#: events `publish_many` builds and sends at a time: an iterable of any length is published
#: in bounded memory (each chunk confirmed before the next is read); a chunk is one
#: publish call for the adapter, the metrics and the trace
PUBLISH_MANY_CHUNK = 10_000


def note_stored(exc: BaseException, stored: int) -> None:
    """A `publish_many` chunk failed with `exc` after `stored` events of earlier chunks
    were confirmed: say so on the error (nothing is noted for a first chunk)."""
    if stored:
        exc.add_note(
            f"publish_many: the {stored} events before this chunk are stored; "
            "none after it was sent"
        )


def build_message(
    event: Event,
    *,
    source: str,
    max_bytes: int,
    key: Any = None,
    headers: dict[str, str] | None = None,
    id: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    time: str | None = None,
    optional: bool = True,
) -> Message:
    """The message of `event`. `optional=False` writes the required CloudEvents
    attributes only (id, source, specversion, type: no `time`, `datacontenttype`,
    `dataschema`; a given `time` is kept), plus the extensions."""
    cls = type(event)
    info = _CLASSES.get(cls)
    if info is None or info[0] is not cls.__stream__:  # a stream set after definition
        info = _class_info(cls)
    stream, etype, to_json, dataschema = info
    body = to_json(event)
    if len(body) > max_bytes:
        raise MessageTooLarge(
            f"{etype} event is {len(body)} bytes, above EVENTBUS_MAX_MESSAGE_BYTES={max_bytes}"
        )
    if optional:
        attrs = {
            "id": id or new_id(),
            "source": source,
            "specversion": "1.0",
            "type": etype,
            "time": time or now_rfc3339(),
            "datacontenttype": "application/json",
            "dataschema": dataschema,
        }
    else:
        attrs = {"id": id or new_id(), "source": source, "specversion": "1.0", "type": etype}
        if time:
            attrs["time"] = time
    if key is not None:
        if type(key) is not str:
            key = str(key)
        attrs["partitionkey"] = key
    if correlation_id:
        attrs["correlationid"] = correlation_id
    if causation_id:
        attrs["causationid"] = causation_id
    if headers:
        for name, value in headers.items():
            attrs[validate_extension(name)] = str(value)
    return Message(stream, etype, key, body, attrs)


def envelope_of(message: Message) -> Envelope:
    return Envelope.from_attributes(message.attributes, message.body, message.stream, message.key)
