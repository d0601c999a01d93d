"""eventbus: broker-agnostic, event-driven messaging for Python.

The public API is what this module exports; everything else is private.
"""

from .broker import Capabilities, DeadLetter, Delivery, Message, SubscriptionSpec
from .bus import EventBus, Subscription
from .context import Context
from .errors import (
    BusClosed,
    ConcurrencyError,
    ConfigurationError,
    DecodeError,
    EventBusError,
    MessageTooLarge,
    PublishError,
    SubscriptionError,
    UnroutableError,
)
from .event import Envelope, Event
from .middleware import HandleMiddleware, HandleNext, PublishMiddleware, PublishNext
from .retry import Reject, Retry, RetryPolicy
from .settings import Settings
from .sync import SyncPublisher

__all__ = [
    "BusClosed",
    "Capabilities",
    "ConcurrencyError",
    "ConfigurationError",
    "Context",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "Envelope",
    "Event",
    "EventBus",
    "EventBusError",
    "HandleMiddleware",
    "HandleNext",
    "Message",
    "MessageTooLarge",
    "PublishError",
    "PublishMiddleware",
    "PublishNext",
    "Reject",
    "Retry",
    "RetryPolicy",
    "Settings",
    "Subscription",
    "SubscriptionError",
    "SubscriptionSpec",
    "SyncPublisher",
    "UnroutableError",
]

__version__ = "0.1.0"
