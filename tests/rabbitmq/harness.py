"""The conformance harness of RabbitMQ: the local broker of scripts/rabbitmq.sh."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pika

from eventbus import EventBus
from eventbus.testing.conformance import Harness

from .support import URL, delete_topology, raw_connection


class RabbitMQHarness(Harness):
    name = "rabbitmq"

    def __init__(self) -> None:
        self._streams: set[str] = set()
        self._buses: list[EventBus] = []

    def url(self) -> str:
        return URL

    def bus(self, **options: Any) -> EventBus:
        bus = super().bus(**options)
        self._buses.append(bus)
        return bus

    async def setup(self) -> None:
        await asyncio.to_thread(lambda: raw_connection().close())

    async def inject_raw(
        self,
        stream: str,
        event_type: str | bytes | None,
        body: bytes,
        key: str | bytes | None = None,
        *,
        headers: Mapping[str | bytes, str | bytes] | None = None,
    ) -> None:
        """Plain pika, as a foreign producer: body and routing key (the type), the key as
        the CloudEvents `partitionkey` extension header, `headers` verbatim; nothing else.
        Bytes go on the wire as they are (pika writes a bytes header value as a byte
        array, `x`, and a bytes routing key or header name unchecked)."""
        self._streams.add(stream)
        table: dict[Any, Any] = dict(headers or {})
        if key is not None:
            table["ce-partitionkey"] = key

        def publish() -> None:
            connection = raw_connection()
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                channel.basic_publish(
                    stream,
                    event_type if event_type is not None else "",  # type: ignore[arg-type]
                    body,
                    pika.BasicProperties(headers=table or None),
                )
            finally:
                connection.close()

        await asyncio.to_thread(publish)

    async def teardown(self) -> None:
        for bus in self._buses:
            await bus.stop()
            self._streams.update(s.stream for s in bus.subscriptions)
        await asyncio.to_thread(delete_topology, sorted(self._streams))
