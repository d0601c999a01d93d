"""`Event`, the typed payload users declare, and `Envelope`, the metadata every event carries."""

from __future__ import annotations

import json
import re
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
        "correlationid",
        "causationid",
        "partitionkey",
    }
)


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


class Envelope:
    """The metadata of one received (or published) event, plus its raw body.

    `body` is the exact bytes on the wire; `data` is the body parsed as JSON.
    `extensions` holds CloudEvents extension attributes that have no field here,
    which is where custom headers given to `publish(headers=...)` arrive.
    """

    __slots__ = (
        "_data",
        "attempt",
        "body",
        "causation_id",
        "content_type",
        "correlation_id",
        "extensions",
        "id",
        "key",
        "source",
        "specversion",
        "stream",
        "time",
        "type",
    )

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
        self.id = id
        self.type = type
        self.stream = stream
        self.source = source
        self.time = time
        self.key = key
        self.body = body
        self.content_type = content_type
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        self.extensions = extensions if extensions is not None else {}
        self.attempt = attempt
        self.specversion = specversion
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
        get = attributes.get
        extensions = {k: v for k, v in attributes.items() if k not in KNOWN_ATTRIBUTES}
        return cls(
            id=get("id", ""),
            type=get("type", ""),
            stream=stream,
            source=get("source", ""),
            time=get("time", ""),
            key=key if key is not None else get("partitionkey"),
            body=body,
            content_type=get("datacontenttype", "application/json"),
            correlation_id=get("correlationid"),
            causation_id=get("causationid"),
            extensions=extensions,
            attempt=attempt,
            specversion=get("specversion", "1.0"),
        )

    def attributes(self) -> dict[str, str]:
        """The CloudEvents context attributes, as they travel (extensions included)."""
        attrs = {
            "id": self.id,
            "source": self.source,
            "specversion": self.specversion,
            "type": self.type,
            "datacontenttype": self.content_type,
        }
        if self.time:
            attrs["time"] = self.time
        if self.key is not None:
            attrs["partitionkey"] = self.key
        if self.correlation_id:
            attrs["correlationid"] = self.correlation_id
        if self.causation_id:
            attrs["causationid"] = self.causation_id
        attrs.update(self.extensions)
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
