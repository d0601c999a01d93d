"""`kafka://host:port[,host:port]`: Apache Kafka through confluent-kafka (librdkafka).

Importing this package needs nothing beyond eventbus: the adapter and confluent-kafka load
on first use of `adapter` (or a class below), so a missing `eventbus[kafka]` extra is
reported clearly by the adapter registry when a `kafka://` bus is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventbus.toolkit import lazy_package

if TYPE_CHECKING:
    from .adapter import KafkaAdapter
    from .broker import KafkaBroker, KafkaSubscription
    from .sync import KafkaSyncTransport

    adapter: KafkaAdapter

_WHERE = {
    "KafkaAdapter": ".adapter",
    "KafkaBroker": ".broker",
    "KafkaSubscription": ".broker",
    "KafkaSyncTransport": ".sync",
}

__getattr__ = lazy_package(__name__, _WHERE, "KafkaAdapter")


__all__ = ["KafkaAdapter", "KafkaBroker", "KafkaSubscription", "KafkaSyncTransport", "adapter"]
