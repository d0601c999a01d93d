"""`amqp://user:password@host:port/vhost` and `amqps://...`: RabbitMQ.

Async path on aio-pika (publisher confirms pipelined, consumers with prefetch, recovery),
sync face on pika. Options: see `settings.RabbitMQSettings`; topology: see `topology`.
The client libraries are imported here so a missing `eventbus[rabbitmq]` extra is
reported when the scheme is first used.
"""

import aio_pika  # noqa: F401 - import-time check of the extra
import pika  # noqa: F401 - import-time check of the extra

from .adapter import RabbitMQAdapter
from .broker import RabbitMQBroker
from .delivery import RabbitMQDelivery
from .settings import RabbitMQSettings, SubscriptionOptions
from .sync import RabbitMQSyncTransport
from .topology import GroupTopology

adapter = RabbitMQAdapter()

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
