"""`Event`, the typed payload users declare, and `Envelope`, the metadata every event carries."""

from __future__ import annotations

import json
import re
import weakref
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_EXTENSION = re.compile(r"^[a-z0-9]{1,20}$")

#: CloudEvents context attributes with a field of their own on `Envelope`.
KNOWN_ATTRIBUTES = frozenset(
    {
        "id",
        "source",
        "specversion",
        "type",
        "time",
        "datacontenttype",
        "dataschema",
        "correlationid",
        "causationid",
        "partitionkey",
    }
)


#: prefix of the CloudEvents `dataschema` of every event eventbus publishes
SCHEMA_URN = "urn:eventbus:schema:"


def schema_id(stream: str, event_type: str) -> str:
    """The CloudEvents `dataschema` of the events of `event_type` on `stream`:
    `urn:eventbus:schema:<stream>:<type>`. It names the payload's JSON Schema: the AsyncAPI
    document of a bus (`eventbus asyncapi`) gives that schema this `$id`. A name, not an
    address: nothing is fetched from it."""
    return f"{SCHEMA_URN}{stream}:{event_type}"


#: every class declared with `stream=` or `type=`, in declaration order; weak, so a class
#: that is gone (defined in a function that returned) is forgotten
_DECLARED: weakref.WeakKeyDictionary[type[Event], None] = weakref.WeakKeyDictionary()


def declared_events() -> list[type[Event]]:
    """The Event classes alive in this process that declare both a stream and a type, in
    declaration order (what `eventbus asyncapi` documents for the streams a bus uses)."""
    return [cls for cls in list(_DECLARED) if cls.__stream__ and cls.__event_type__]


def validate_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use dot-separated words of letters, digits, '_' or '-'"
        )
    return value


def validate_extension(name: str) -> str:
    """CloudEvents extension names are 1-20 lower-case letters or digits."""
    if name in KNOWN_ATTRIBUTES or not _EXTENSION.match(name):
        raise ValueError(
            f"invalid header {name!r}: custom headers travel as CloudEvents extensions, whose "
            "names are 1-20 lower-case letters or digits and not a reserved attribute"
        )
    return name


class Event(BaseModel):
    """Base class of typed events. Declare the stream and type on the class::

        class OrderCreated(Event, stream="orders", type="order.created"):
            order_id: str

    Unknown fields in received JSON are ignored, so producers can add fields first.
    """

    model_config = ConfigDict(extra="ignore")

    __stream__: ClassVar[str] = ""
    __event_type__: ClassVar[str] = ""

    def __init_subclass__(
        cls, *, stream: str | None = None, type: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if stream is not None:
            cls.__stream__ = validate_name("stream", stream)
        if type is not None:
            if "*" in type or "#" in type:
                raise ValueError(f"event type {type!r} must not contain '*' or '#'")
            cls.__event_type__ = validate_name("event type", type)
        if stream is not None or type is not None:
            _DECLARED[cls] = None


class Envelope:
    """The metadata of one received (or published) event, plus its raw body.

    `body` is the exact bytes on the wire; `data` is the body parsed as JSON.
    `extensions` holds CloudEvents extension attributes that have no field here,
    which is where custom headers given to `publish(headers=...)` arrive.
    Fields are read from the CloudEvents attributes on access, so an envelope is cheap
    to make on the hot path.
    """

    __slots__ = ("_attrs", "_data", "attempt", "body", "key", "stream")

    def __init__(
        self,
        *,
        id: str,
        type: str,
        stream: str,
        source: str = "",
        time: str = "",
        key: str | None = None,
        body: bytes = b"",
        content_type: str = "application/json",
        correlation_id: str | None = None,
        causation_id: str | None = None,
        extensions: dict[str, str] | None = None,
        attempt: int = 1,
        specversion: str = "1.0",
        data: Any = ...,
    ) -> None:
        attrs = {
            "id": id,
            "source": source,
            "specversion": specversion,
            "type": type,
            "datacontenttype": content_type,
        }
        if time:
            attrs["time"] = time
        if key is not None:
            attrs["partitionkey"] = key
        if correlation_id:
            attrs["correlationid"] = correlation_id
        if causation_id:
            attrs["causationid"] = causation_id
        if extensions:
            attrs.update(extensions)
        self._attrs = attrs
        self.stream = stream
        self.key = key
        self.body = body
        self.attempt = attempt
        self._data = data

    @classmethod
    def from_attributes(
        cls,
        attributes: dict[str, str],
        body: bytes,
        stream: str,
        key: str | None = None,
        attempt: int = 1,
    ) -> Envelope:
        self = cls.__new__(cls)
        self._attrs = attributes
        self.stream = stream
        self.key = key if key is not None else attributes.get("partitionkey")
        self.body = body
        self.attempt = attempt
        self._data = ...
        return self

    @property
    def id(self) -> str:
        return self._attrs.get("id", "")

    @property
    def type(self) -> str:
        return self._attrs.get("type", "")

    @property
    def source(self) -> str:
        return self._attrs.get("source", "")

    @property
    def specversion(self) -> str:
        return self._attrs.get("specversion", "1.0")

    @property
    def time(self) -> str:
        return self._attrs.get("time", "")

    @property
    def content_type(self) -> str:
        return self._attrs.get("datacontenttype", "application/json")

    @property
    def dataschema(self) -> str | None:
        """The CloudEvents `dataschema`: the id of the payload's schema (eventbus writes
        `urn:eventbus:schema:<stream>:<type>`; None when the producer sent none)."""
        return self._attrs.get("dataschema")

    @property
    def correlation_id(self) -> str | None:
        return self._attrs.get("correlationid")

    @property
    def causation_id(self) -> str | None:
        return self._attrs.get("causationid")

    @property
    def extensions(self) -> dict[str, str]:
        return {k: v for k, v in self._attrs.items() if k not in KNOWN_ATTRIBUTES}

    def attributes(self) -> dict[str, str]:
        """The CloudEvents context attributes, as they travel (extensions included)."""
        attrs = dict(self._attrs)
        if self.key is not None:
            attrs["partitionkey"] = self.key
        return attrs

    @property
    def data(self) -> Any:
        """The body parsed as JSON (parsed on first access)."""
        if self._data is ...:
            self._data = json.loads(self.body)
        return self._data

    @property
    def timestamp(self) -> datetime | None:
        if not self.time:
            return None
        return datetime.fromisoformat(self.time.replace("Z", "+00:00"))

    @property
    def headers(self) -> dict[str, str]:
        """Custom headers given at publish time (the CloudEvents extensions)."""
        return self.extensions

    def __repr__(self) -> str:
        return (
            f"Envelope(id={self.id!r}, stream={self.stream!r}, type={self.type!r}, "
            f"key={self.key!r}, attempt={self.attempt})"
        )
