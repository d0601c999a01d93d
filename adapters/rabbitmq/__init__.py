"""`amqp://user:password@host:port/vhost` and `amqps://...`: RabbitMQ.

Async path on aio-pika (publisher confirms pipelined, consumers with prefetch, recovery),
sync face on pika. Options: see `settings.RabbitMQSettings`; topology: see `topology`.
Importing this package needs nothing beyond eventbus: the adapter and its client
libraries load on first use of `adapter` (or a class below), so a missing
`eventbus[rabbitmq]` extra is reported clearly when an `amqp://` bus is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventbus.toolkit import lazy_package

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

# pika (the sync face's client) is checked up front too
__getattr__ = lazy_package(__name__, _WHERE, "RabbitMQAdapter", requires=("pika",))


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
