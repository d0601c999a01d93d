"""`Context`: what a handler knows about the event it is handling, and how it publishes more."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from .event import Envelope, Event

if TYPE_CHECKING:
    from .protocol import Delivery
    from .publisher import Publisher

#: the context of the handler running in this task/thread (None outside handlers)
current_context: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "eventbus_context", default=None
)


def correlate_attributes(attributes: dict[str, str]) -> None:
    """Give an outgoing event the correlation and causation ids of the event being handled
    in this task or thread, if any (explicit ids win)."""
    ctx = current_context.get()
    if ctx is not None:
        if "causationid" not in attributes:
            attributes["causationid"] = ctx.envelope.id
        if "correlationid" not in attributes:
            attributes["correlationid"] = ctx.envelope.correlation_id or ctx.envelope.id


class Context:
    """Passed as the second argument of a handler.

    `ctx.publish(...)` publishes with `correlationid` (the first event's id, carried along
    a chain) and `causationid` (this event's id) set; `bus.publish` inside a handler does
    the same through the correlation middleware.
    """

    __slots__ = ("_bus", "_delivery", "envelope", "event", "group")

    def __init__(
        self,
        bus: Publisher,
        group: str,
        envelope: Envelope,
        event: Event | Envelope,
        delivery: Delivery,
    ) -> None:
        self._bus = bus
        self.group = group
        self.envelope = envelope
        self.event = event
        self._delivery = delivery

    @property
    def attempt(self) -> int:
        """1 for the first try, 2 for the first retry, ..."""
        return self.envelope.attempt

    @property
    def bus(self) -> Publisher:
        """The bus this event came from (to publish through)."""
        return self._bus

    @property
    def partition(self) -> int | None:
        return self._delivery.partition

    @property
    def offset(self) -> int | None:
        return self._delivery.offset

    @property
    def routing_key(self) -> str | None:
        return self._delivery.routing_key

    @property
    def redelivered(self) -> bool:
        return self._delivery.redelivered

    async def publish(
        self, event: Event, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> Envelope:
        return await self._bus.publish(
            event,
            key=key,
            headers=headers,
            correlation_id=self.envelope.correlation_id or self.envelope.id,
            causation_id=self.envelope.id,
        )

    def log_fields(self) -> dict[str, Any]:
        return {
            "event_id": self.envelope.id,
            "stream": self.envelope.stream,
            "type": self.envelope.type,
            "group": self.group,
            "attempt": self.attempt,
        }
