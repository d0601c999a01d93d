"""What an event store keeps: `NewEvent` (to append), `StoredEvent` (read back), `Snapshot`.

A stored event keeps the CloudEvents metadata it will travel with (id, type, bus stream,
time, key, correlation/causation, extension headers), so the outbox relay publishes it
with the same id end to end and consumers can deduplicate on that id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eventbus.wire import new_id, now_rfc3339


@dataclass(slots=True)
class NewEvent:
    """One event to append; `data` is its JSON body."""

    type: str
    data: bytes
    #: the bus stream it is published on (e.g. `orders`)
    stream: str
    #: the ordering key on the bus (the aggregate id)
    key: str | None = None
    schema_version: int = 1
    #: a UUID; `new_id`'s sort by creation, so the store's id index grows at its end
    id: str = field(default_factory=new_id)
    time: str = field(default_factory=now_rfc3339)
    correlation_id: str | None = None
    causation_id: str | None = None
    #: CloudEvents extension attributes (lower-case names)
    headers: dict[str, str] = field(default_factory=dict)


class StoredEvent:
    """One event as the store returns it: the `NewEvent` fields plus where it is stored.

    `stream_id` names the event-store stream (one per aggregate, e.g. `order-o-1`),
    `version` is its 1-based place in that stream and `position` its 1-based place in
    the store's global order.
    """

    __slots__ = (
        "causation_id",
        "correlation_id",
        "data",
        "headers",
        "id",
        "key",
        "position",
        "schema_version",
        "stream",
        "stream_id",
        "time",
        "type",
        "version",
    )

    def __init__(
        self,
        position: int,
        stream_id: str,
        version: int,
        id: str,
        type: str,
        schema_version: int,
        data: bytes,
        stream: str,
        key: str | None,
        time: str,
        correlation_id: str | None,
        causation_id: str | None,
        headers: dict[str, str],
    ) -> None:
        self.position = position
        self.stream_id = stream_id
        self.version = version
        self.id = id
        self.type = type
        self.schema_version = schema_version
        self.data = data
        self.stream = stream
        self.key = key
        self.time = time
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        self.headers = headers

    @classmethod
    def of(cls, new: NewEvent, stream_id: str, version: int, position: int) -> StoredEvent:
        return cls(
            position,
            stream_id,
            version,
            new.id,
            new.type,
            new.schema_version,
            new.data,
            new.stream,
            new.key,
            new.time,
            new.correlation_id,
            new.causation_id,
            dict(new.headers),
        )

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoredEvent) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"StoredEvent(position={self.position}, stream_id={self.stream_id!r}, "
            f"version={self.version}, type={self.type!r}, id={self.id!r})"
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An aggregate's state at `version`, as JSON; `schema_version` of the state layout."""

    stream_id: str
    version: int
    state: bytes
    schema_version: int = 1
    time: str = field(default_factory=now_rfc3339)
