"""The `eventbus.adapters` entry point of `amqp://` and `amqps://`."""

from __future__ import annotations

from eventbus.toolkit import (
    Settings,
)

from .broker import RabbitMQBroker
from .sync import RabbitMQSyncTransport


class RabbitMQAdapter:
    def create_broker(self, settings: Settings) -> RabbitMQBroker:
        return RabbitMQBroker(settings)

    def create_sync_transport(self, settings: Settings) -> RabbitMQSyncTransport:
        return RabbitMQSyncTransport(settings)
