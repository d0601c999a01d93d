"""eventbus: broker-agnostic, event-driven messaging for Python.

The public API is what this module exports; everything else is private.
"""

from .batch import BatchContext
from .bus import EventBus, Subscription
from .context import Context, correlation_scope

# event sourcing and CQRS (import after the core: they build on it)
from .cqrs import CommandBus, DomainError, InvalidTransition, NotFound, QueryBus
from .errors import (
    BusClosed,
    ConcurrencyError,
    ConfigurationError,
    ConsumerFailed,
    DecodeError,
    EventBusError,
    MessageTooLarge,
    PublishError,
    SubscriptionError,
    UnroutableError,
)
from .event import Envelope, Event
from .health import Health
from .heap import freeze_heap
from .protocol import Capabilities, DeadLetter, Delivery, Message, SubscriptionSpec
from .publisher import Publisher
from .requests import RequestFailed, RequestTimeout
from .retry import Reject, Retry, RetryPolicy
from .settings import Settings
from .sourcing import (
    Aggregate,
    EventCodec,
    EventStore,
    Inbox,
    OutboxRelay,
    Projection,
    Repository,
    Upcasters,
    applies,
    open_store,
    transactional,
)
from .sync import SyncPublisher
from .types import HandleMiddleware, HandleNext, PublishMiddleware, PublishNext

__all__ = [
    "Aggregate",
    "BatchContext",
    "BusClosed",
    "Capabilities",
    "CommandBus",
    "ConcurrencyError",
    "ConfigurationError",
    "ConsumerFailed",
    "Context",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "DomainError",
    "Envelope",
    "Event",
    "EventBus",
    "EventBusError",
    "EventCodec",
    "EventStore",
    "HandleMiddleware",
    "HandleNext",
    "Health",
    "Inbox",
    "InvalidTransition",
    "Message",
    "MessageTooLarge",
    "NotFound",
    "OutboxRelay",
    "Projection",
    "PublishError",
    "PublishMiddleware",
    "PublishNext",
    "Publisher",
    "QueryBus",
    "Reject",
    "Repository",
    "RequestFailed",
    "RequestTimeout",
    "Retry",
    "RetryPolicy",
    "Settings",
    "Subscription",
    "SubscriptionError",
    "SubscriptionSpec",
    "SyncPublisher",
    "UnroutableError",
    "Upcasters",
    "applies",
    "correlation_scope",
    "freeze_heap",
    "open_store",
    "transactional",
]

__version__ = "0.1.0"
