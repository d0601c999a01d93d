"""The sync face of `memory://`: thread-safe publishing into the named broker."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.toolkit import (
    Message,
    Settings,
)

from .state import current_loop, memory_state, name_of


class MemorySyncTransport:
    """Sync face of `memory://`: thread-safe publishing into the named broker."""

    system = "memory"

    def __init__(self, settings: Settings) -> None:
        self.world = memory_state(name_of(settings.url))

    def publish(self, messages: Sequence[Message]) -> None:
        loop = current_loop()
        for message in messages:
            self.world.publish(message, loop)

    def close(self) -> None:
        pass
