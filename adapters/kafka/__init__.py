"""`kafka://host:port[,host:port]`: Apache Kafka through confluent-kafka (librdkafka).

Importing this package needs nothing beyond eventbus: the adapter and confluent-kafka load
on first use of `adapter` (or a class below), so a missing `eventbus[kafka]` extra is
reported clearly by the adapter registry when a `kafka://` bus is made.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name == "adapter":
        value: Any = __getattr__("KafkaAdapter")()
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = ["KafkaAdapter", "KafkaBroker", "KafkaSubscription", "KafkaSyncTransport", "adapter"]
