from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from eventbus import EventBus
from eventbus.testing.conformance import unique

from .support import URL, delete_topology, raw_connection


class Broker:
    """Per-test access to the local RabbitMQ: fresh stream names, buses, clean-up."""

    def __init__(self) -> None:
        self.streams: list[str] = []
        self.buses: list[EventBus] = []
        self.url = URL

    def stream(self) -> str:
        name = unique("rmq")
        self.streams.append(name)
        return name

    def bus(self, url: str | None = None, **options: Any) -> EventBus:
        bus = EventBus(url or URL, **options)
        self.buses.append(bus)
        return bus


@pytest.fixture
async def rabbit() -> AsyncIterator[Broker]:
    await asyncio.to_thread(lambda: raw_connection().close())  # fail loudly, never skip
    broker = Broker()
    try:
        yield broker
    finally:
        for bus in broker.buses:
            await bus.stop()
        await asyncio.to_thread(delete_topology, broker.streams)


@pytest.fixture
def pika_channel() -> Any:
    connection = raw_connection()
    try:
        yield connection.channel()
    finally:
        connection.close()
