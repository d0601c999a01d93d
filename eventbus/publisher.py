"""The bus as a handler's context and a subscription's pipeline know it: a `Publisher`
(and a `BusHandle`), never `EventBus` itself, so neither module imports the bus and
bus -> pipeline -> bus or bus -> middleware -> context -> bus never loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .event import Envelope, Event
    from .protocol import Message


class Publisher(Protocol):
    """Publishing, as a handler's `Context` uses it (the bus implements it)."""

    async def publish(
        self,
        event: Event,
        *,
        key: Any = None,
        headers: dict[str, str] | None = None,
        id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        time: str | None = None,
    ) -> Envelope: ...


class BusHandle(Publisher, Protocol):
    """What a subscription's pipeline needs of its bus: publishing (for its handlers'
    contexts) and a place to report a problem, or that it is resolved (`None`)."""

    def report_problem(self, component: str, problem: str | None) -> None: ...

    async def prepare(
        self,
        event: Event,
        *,
        key: Any = None,
        headers: dict[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> tuple[Envelope, list[Message]]:
        """The event's envelope and the messages `publish` would send for it (after the
        publish middleware), without sending them: an exactly-once delivery stages them."""
        ...
