"""`Aggregate`: state changes only by applying events.

    class Order(Aggregate, category="order"):
        status: str = "new"

        def pay(self, amount: float) -> None:         # a command: validate, then record
            if self.status != "created":
                raise InvalidTransition(...)
            self.record(OrderPaid(order_id=self.id, amount=amount))

        @applies
        def _paid(self, event: OrderPaid) -> None:    # the only place state changes
            self.status = "paid"

`record` applies the event at once and keeps it as pending until the repository saves
it; loading replays history (after a snapshot, if any) through the same appliers.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from eventbus.event import Event, validate_name

A = TypeVar("A", bound="Aggregate")
F = TypeVar("F", bound=Callable[..., None])


def applies(fn: F) -> F:
    """Mark a method as the applier of the event class its parameter is annotated with."""
    fn.__eventbus_applies__ = True  # type: ignore[attr-defined]
    return fn


class Aggregate:
    """Base class of event-sourced aggregates (see the module docstring)."""

    #: names the aggregate's streams in the store: `<category>-<id>`
    category: ClassVar[str] = ""
    #: version of the snapshot layout; bump it when `snapshot()` changes shape
    snapshot_version: ClassVar[int] = 1
    _appliers: ClassVar[dict[type[Event], Callable[[Any, Any], None]]] = {}

    def __init_subclass__(cls, *, category: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if category is not None:
            cls.category = validate_name("aggregate category", category)
        appliers = dict(cls._appliers)
        for name, fn in vars(cls).items():
            if not getattr(fn, "__eventbus_applies__", False):
                continue
            hints = typing.get_type_hints(fn)
            hints.pop("return", None)
            event_cls = next(iter(hints.values()), None)
            if not (isinstance(event_cls, type) and issubclass(event_cls, Event)):
                raise TypeError(
                    f"{cls.__name__}.{name}: annotate the event parameter of an @applies "
                    "method with its Event class"
                )
            appliers[event_cls] = fn
        cls._appliers = appliers

    def __init__(self, id: str) -> None:
        self.id = id
        self.version = 0
        self._pending: list[Event] = []

    @classmethod
    def stream_id(cls, id: str) -> str:
        if not cls.category:
            raise TypeError(f"declare class {cls.__name__}(Aggregate, category='...')")
        return f"{cls.category}-{id}"

    @classmethod
    def event_classes(cls) -> list[type[Event]]:
        return list(cls._appliers)

    # --- recording and applying ------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Apply a new event and keep it for saving. Commands call this after validating."""
        self._apply(event)
        self._pending.append(event)

    def _apply(self, event: Event) -> None:
        applier = self._appliers.get(type(event))
        if applier is None:
            raise TypeError(f"{type(self).__name__} has no @applies method for {type(event)}")
        applier(self, event)
        self.version += 1

    @property
    def pending(self) -> list[Event]:
        """Events recorded since the aggregate was loaded or last saved."""
        return list(self._pending)

    def mark_saved(self) -> None:
        self._pending.clear()

    @classmethod
    def rehydrate(
        cls: type[A],
        id: str,
        events: Iterable[Event],
        *,
        snapshot: dict[str, Any] | None = None,
        snapshot_version: int = 0,
    ) -> A:
        """Rebuild an aggregate from its history (after `snapshot`, taken at that version)."""
        aggregate = cls(id)
        if snapshot is not None:
            aggregate.restore(snapshot)
            aggregate.version = snapshot_version
        for event in events:
            aggregate._apply(event)
        return aggregate

    # --- snapshots -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The state as JSON-able data: public attributes except `id` and `version`.
        Override with `restore` for state that is not plain JSON."""
        return {
            k: v
            for k, v in vars(self).items()
            if not k.startswith("_") and k not in ("id", "version")
        }

    def restore(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def snapshot_bytes(self) -> bytes:
        return json.dumps(self.snapshot(), separators=(",", ":"), sort_keys=True).encode()

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, Aggregate)
            and (self.id, self.version, self.snapshot())
            == (other.id, other.version, other.snapshot())
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, version={self.version})"
