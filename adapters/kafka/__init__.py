"""`kafka://host:port[,host:port]`: Apache Kafka through confluent-kafka (librdkafka).

Importing this package imports `confluent_kafka`, so a missing `eventbus[kafka]` extra is
reported clearly by the adapter registry.
"""

import confluent_kafka  # noqa: F401  (the client library: fail here if it is missing)

from .adapter import KafkaAdapter
from .broker import KafkaBroker, KafkaSubscription
from .sync import KafkaSyncTransport

adapter = KafkaAdapter()

__all__ = ["KafkaAdapter", "KafkaBroker", "KafkaSubscription", "KafkaSyncTransport", "adapter"]
