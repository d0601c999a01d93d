"""The sync face: publish from Flask, Django or scripts with the same envelope and guarantees
(RabbitMQ confirms over pika, Kafka delivery reports from the confluent Producer)."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any

from .context import correlate_attributes
from .event import Envelope, Event
from .messages import PUBLISH_MANY_CHUNK, build_message, envelope_of, note_stored
from .observer import make_tracing
from .protocol import Message, SyncTransport
from .registry import find_adapter
from .settings import Settings, load_settings, redact_url


class SyncPublisher:
    """Blocking publisher; `publish` returns once the broker confirmed the event::

    with SyncPublisher("amqp://guest:guest@127.0.0.1/") as publisher:
        publisher.publish(OrderCreated(...), key="o-1")
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        tracer_provider: Any = None,
        **options: Any,
    ) -> None:
        """`tracer_provider`: an OpenTelemetry provider instead of the global one (each
        publish is then a `publish` span whose context the events carry, as on the bus)."""
        if settings is None:
            settings = load_settings(url, **options)
        self.settings = settings
        transport = find_adapter(settings).create_sync_transport(settings)
        self._transport: SyncTransport | None = transport
        system = str(getattr(transport, "system", settings.scheme))
        self._tracing = make_tracing(settings.tracing, tracer_provider, system)

    def __repr__(self) -> str:
        return f"SyncPublisher({redact_url(self.settings.url)!r})"

    def _message(
        self, event: Event, key: Any, headers: dict[str, str] | None, id: str | None
    ) -> Message:
        message = build_message(
            event,
            source=self.settings.source,
            max_bytes=self.settings.max_message_bytes,
            key=key,
            headers=headers,
            id=id,
            optional=self.settings.optional_attributes,
        )
        correlate_attributes(message.attributes)
        return message

    def publish(
        self,
        event: Event,
        *,
        key: Any = None,
        headers: dict[str, str] | None = None,
        id: str | None = None,
    ) -> Envelope:
        message = self._message(event, key, headers, id)
        transport = self._require()
        tracing = self._tracing
        if tracing is None:
            transport.publish([message])
        else:
            span = tracing.start_publish(message)
            try:
                transport.publish([message])
            except BaseException as exc:
                tracing.end(span, exc)
                raise
            tracing.end(span)
        return envelope_of(message)

    def publish_many(self, events: Iterable[Event | tuple[Event, Any]]) -> list[str]:
        """Publish many events, pipelined; returns their ids once all are confirmed. As
        `EventBus.publish_many`: `PUBLISH_MANY_CHUNK` events at a time, each chunk
        confirmed before the next is read (bounded memory for any length, order kept);
        a chunk that fails raises, with a note of how many before it were stored."""
        items = iter(events)
        transport = self._require()
        ids: list[str] = []
        while True:
            try:
                messages = [
                    self._message(*_pair(item), None, None)
                    for item in islice(items, PUBLISH_MANY_CHUNK)
                ]
                if messages:
                    self._send_many(transport, messages)
            except Exception as exc:
                note_stored(exc, len(ids))
                raise
            ids.extend(m.attributes["id"] for m in messages)
            if len(messages) < PUBLISH_MANY_CHUNK:
                return ids

    def _send_many(self, transport: SyncTransport, messages: list[Message]) -> None:
        tracing = self._tracing
        if tracing is None:
            transport.publish(messages)
            return
        streams = {m.stream for m in messages}
        stream = next(iter(streams)) if len(streams) == 1 else "(several)"
        span = tracing.start_publish_batch(stream, messages)
        try:
            transport.publish(messages)
        except BaseException as exc:
            tracing.end(span, exc)
            raise
        tracing.end(span)

    def _require(self) -> SyncTransport:
        if self._transport is None:
            raise RuntimeError("SyncPublisher is closed")
        return self._transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def __enter__(self) -> SyncPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _pair(item: Event | tuple[Event, Any]) -> tuple[Event, Any]:
    return item if isinstance(item, tuple) else (item, None)
