"""`amqp://user:password@host:port/vhost` and `amqps://...`: RabbitMQ.

Async path on aio-pika (publisher confirms pipelined, consumers with prefetch, recovery),
sync face on pika. Options: see `settings.RabbitMQSettings`; topology: see `topology`.
Importing this package needs nothing beyond eventbus: the adapter and its client
libraries load on first use of `adapter` (or a class below), so a missing
`eventbus[rabbitmq]` extra is reported clearly when an `amqp://` bus is made.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapter import RabbitMQAdapter
    from .broker import RabbitMQBroker
    from .delivery import RabbitMQDelivery
    from .settings import RabbitMQSettings, SubscriptionOptions
    from .sync import RabbitMQSyncTransport
    from .topology import GroupTopology

    adapter: RabbitMQAdapter

_WHERE = {
    "GroupTopology": ".topology",
    "RabbitMQAdapter": ".adapter",
    "RabbitMQBroker": ".broker",
    "RabbitMQDelivery": ".delivery",
    "RabbitMQSettings": ".settings",
    "RabbitMQSyncTransport": ".sync",
    "SubscriptionOptions": ".settings",
}


def __getattr__(name: str) -> Any:
    if name == "adapter":
        importlib.import_module("pika")  # the sync face's client: checked up front too
        value: Any = __getattr__("RabbitMQAdapter")()
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [
    "GroupTopology",
    "RabbitMQAdapter",
    "RabbitMQBroker",
    "RabbitMQDelivery",
    "RabbitMQSettings",
    "RabbitMQSyncTransport",
    "SubscriptionOptions",
    "adapter",
]
