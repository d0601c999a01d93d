"""The sync face of `kafka://`: the same producer configuration, blocking until stored."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.toolkit import (
    Message,
    Settings,
)

from .producer import SyncProducer, record_of
from .settings import client_configs
from .topics import Topics


class KafkaSyncTransport:
    """Sync face of `kafka://`: the same producer configuration, blocking until stored."""

    system = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.configs = client_configs(settings)
        self.topics = Topics(self.configs)
        self._producer = SyncProducer(self.configs)

    def publish(self, messages: Sequence[Message]) -> None:
        missing = {m.stream for m in messages if m.stream not in self.topics.known}
        if missing:
            self.topics.ensure({s: self.configs.settings.partitions for s in missing})
        self._producer.send_many([record_of(m) for m in messages])

    def close(self) -> None:
        self._producer.close()
