"""`Context`: what a handler knows about the event it is handling, and how it publishes more."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from .event import Envelope, Event

if TYPE_CHECKING:
    from .protocol import Delivery
    from .publisher import Publisher

#: where `ctx.publish` puts an event instead of publishing it at once:
#: `sink(event, key, headers, correlation_id, causation_id) -> its envelope`. Exactly-once
#: subscriptions stage it on the delivery (one broker transaction with the settlement); a
#: transactional handler (`eventbus.sourcing.transactional`) writes it to the outbox in
#: the handler's database transaction.
Sink = Callable[[Event, str | None, dict[str, str] | None, str, str], Awaitable[Envelope]]

#: the context of the handler running in this task/thread (None outside handlers)
current_context: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "eventbus_context", default=None
)

#: the correlation id of the work this task/thread does outside handlers: an HTTP request
#: (`eventbus.fastapi.CorrelationIdMiddleware` sets it from `X-Correlation-ID`), a job
#: (None: none); set it with `correlation_scope`
current_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "eventbus_correlation_id", default=None
)


@contextlib.contextmanager
def correlation_scope(correlation_id: str | None) -> Iterator[str | None]:
    """Events published inside the block (`bus.publish`, `SyncPublisher.publish`, saved by
    a `Repository`) carry `correlation_id`, unless they give their own or are published by a
    handler (whose event's chain wins). Scopes nest; `None` clears the id for the block.
    Context variables follow tasks and threads started inside (asyncio, `to_thread`)."""
    token = current_correlation_id.set(correlation_id)
    try:
        yield correlation_id
    finally:
        current_correlation_id.reset(token)


def ambient_ids() -> tuple[str | None, str | None]:
    """(correlation id, causation id) an event created now should carry: those of the event
    being handled in this task or thread (its chain's correlation id, its own id as the
    cause), else the `correlation_scope`'s id and no cause."""
    ctx = current_context.get()
    if ctx is not None:
        return ctx.envelope.correlation_id or ctx.envelope.id, ctx.envelope.id
    return current_correlation_id.get(), None


def correlate_attributes(attributes: dict[str, str]) -> None:
    """Give an outgoing event the correlation and causation ids of the event being handled
    in this task or thread, if any, else the correlation id of the current
    `correlation_scope` (an HTTP request's); explicit ids win."""
    ctx = current_context.get()
    if ctx is not None:
        if "causationid" not in attributes:
            attributes["causationid"] = ctx.envelope.id
        if "correlationid" not in attributes:
            attributes["correlationid"] = ctx.envelope.correlation_id or ctx.envelope.id
    elif "correlationid" not in attributes:
        scoped = current_correlation_id.get()
        if scoped is not None:
            attributes["correlationid"] = scoped


class Context:
    """Passed as the second argument of a handler.

    `ctx.publish(...)` publishes with `correlationid` (the first event's id, carried along
    a chain) and `causationid` (this event's id) set; `bus.publish` inside a handler does
    the same through the correlation middleware.
    """

    __slots__ = ("_bus", "_delivery", "_envelope", "event", "group", "sink")

    def __init__(
        self,
        bus: Publisher,
        group: str,
        envelope: Envelope | None,
        event: Event | Envelope,
        delivery: Delivery,
        sink: Sink | None = None,
    ) -> None:
        """`envelope` None: made from `delivery` when first read (most handlers of a
        typed event never read it: once per event saved)."""
        self._bus = bus
        self.group = group
        self._envelope = envelope
        self.event = event
        self._delivery = delivery
        #: where `publish` puts events (None: the bus, at once); see `Sink`
        self.sink = sink

    @property
    def envelope(self) -> Envelope:
        """The event's metadata (id, type, time, key, attempt, ...) and raw body."""
        envelope = self._envelope
        if envelope is None:
            d = self._delivery
            envelope = self._envelope = Envelope.from_attributes(
                d.attributes, d.body, d.stream, d.key, d.attempt
            )
        return envelope

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

    @property
    def delivery(self) -> Delivery:
        """The adapter's delivery of this event (its transport fields)."""
        return self._delivery

    async def publish(
        self, event: Event, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> Envelope:
        """Publish an event caused by this one. On an exactly-once subscription, and in a
        transactional handler, it is not sent at once: it is committed with this event's
        settlement (or database transaction) and dropped if the handler fails."""
        correlation_id = self.envelope.correlation_id or self.envelope.id
        sink = self.sink
        if sink is not None:
            return await sink(event, key, headers, correlation_id, self.envelope.id)
        return await self._bus.publish(
            event,
            key=key,
            headers=headers,
            correlation_id=correlation_id,
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
