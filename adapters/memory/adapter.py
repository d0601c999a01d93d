"""The `eventbus.adapters` entry point of `memory://`."""

from __future__ import annotations

from eventbus.toolkit import (
    Settings,
)

from .broker import MemoryBroker
from .sync import MemorySyncTransport


class MemoryAdapter:
    def create_broker(self, settings: Settings) -> MemoryBroker:
        return MemoryBroker(settings)

    def create_sync_transport(self, settings: Settings) -> MemorySyncTransport:
        return MemorySyncTransport(settings)
