"""The sync face of `kafka://`: the same producer configuration, blocking until stored."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.toolkit import (
    Message,
    Settings,
)

from .link import check_cluster
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
        #: the cluster answered the start-up check (`check_cluster`, on the first publish)
        self._checked = False

    def publish(self, messages: Sequence[Message]) -> None:
        if not self._checked:  # a refused login or certificate fails here, naming the setting
            check_cluster(self.configs, self.configs.settings.connect_timeout)
            self._checked = True
        missing = {m.stream for m in messages if m.stream not in self.topics.known}
        if missing:
            self.topics.ensure({s: self.configs.settings.partitions for s in missing})
        self._producer.send_many([record_of(m) for m in messages])

    def close(self) -> None:
        self._producer.close()
