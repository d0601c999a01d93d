"""The `eventbus.adapters` entry point of `kafka://`."""

from __future__ import annotations

from eventbus.toolkit import (
    Settings,
)

from .broker import KafkaBroker
from .sync import KafkaSyncTransport


class KafkaAdapter:
    def create_broker(self, settings: Settings) -> KafkaBroker:
        return KafkaBroker(settings)

    def create_sync_transport(self, settings: Settings) -> KafkaSyncTransport:
        return KafkaSyncTransport(settings)
