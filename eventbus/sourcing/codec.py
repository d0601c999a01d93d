"""`EventCodec`: typed events <-> stored events (encoding, type registry, upcasting)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from eventbus.event import Event

from .records import NewEvent, StoredEvent
from .upcasting import Upcasters


def schema_version(cls: type[Event]) -> int:
    """The current schema version of an event class (`__schema_version__`, default 1)."""
    return int(getattr(cls, "__schema_version__", 1))


class EventCodec:
    """Knows the event classes of a store: encodes them for `append` and decodes what
    `read` returns, upcasting older versions first."""

    def __init__(
        self, classes: Iterable[type[Event]] = (), *, upcasters: Upcasters | None = None
    ) -> None:
        self.upcasters = upcasters or Upcasters()
        self._classes: dict[str, type[Event]] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[Event]) -> type[Event]:
        etype = cls.__event_type__
        if not etype or not cls.__stream__:
            raise TypeError(
                f"{cls.__name__} has no stream/type: declare "
                f"class {cls.__name__}(Event, stream='...', type='...')"
            )
        known = self._classes.get(etype)
        if known is not None and known is not cls:
            raise ValueError(f"event type {etype!r} is registered to {known.__name__} already")
        self._classes[etype] = cls
        return cls

    def event_class(self, event_type: str) -> type[Event]:
        try:
            return self._classes[event_type]
        except KeyError:
            raise LookupError(
                f"event type {event_type!r} is not registered with this codec"
            ) from None

    @property
    def types(self) -> frozenset[str]:
        return frozenset(self._classes)

    def encode(
        self,
        event: Event,
        *,
        key: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> NewEvent:
        cls = type(event)
        if self._classes.get(cls.__event_type__) is not cls:
            self.register(cls)
        return NewEvent(
            type=cls.__event_type__,
            data=cls.__pydantic_serializer__.to_json(event),
            stream=cls.__stream__,
            key=key,
            schema_version=schema_version(cls),
            correlation_id=correlation_id,
            causation_id=causation_id,
            headers=dict(headers or {}),
        )

    def decode(self, stored: StoredEvent) -> Event:
        """The stored event as an instance of its current class (upcast if older)."""
        cls = self.event_class(stored.type)
        current = schema_version(cls)
        if stored.schema_version == current:
            return cls.model_validate_json(stored.data)
        data: dict[str, Any] = json.loads(stored.data)
        return cls.model_validate(
            self.upcasters.upcast(stored.type, stored.schema_version, data, current)
        )
