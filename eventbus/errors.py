"""Exceptions users see. Every error names what to do about it."""

from __future__ import annotations


class EventBusError(Exception):
    """Base class of every error eventbus raises."""


class ConfigurationError(EventBusError):
    """A setting is wrong or missing; raised at start-up, naming the setting."""


class PublishError(EventBusError):
    """The broker did not confirm an event: it was not stored, and the caller must know."""


class UnroutableError(PublishError):
    """The broker accepted the event but no queue was bound to take it (RabbitMQ `mandatory`)."""


class MessageTooLarge(PublishError, ValueError):
    """The encoded event is larger than `EVENTBUS_MAX_MESSAGE_BYTES`."""


class SubscriptionError(EventBusError, TypeError):
    """A handler cannot be subscribed as written (bad annotation, mixed streams, ...)."""


class BusClosed(EventBusError, RuntimeError):
    """The bus is not running: enter `async with bus` first."""


class ConsumerFailed(EventBusError, RuntimeError):
    """A subscription's consumer died unexpectedly; the bus stopped itself rather than run
    half-alive (`bus.run()` raises it, so `eventbus run` exits non-zero)."""


class Unsupported(EventBusError, NotImplementedError):
    """The broker's adapter does not offer this operation (its capabilities say which)."""


class DecodeError(EventBusError):
    """A received message could not be turned into an event: bad bytes, bad JSON, no type."""


class ConcurrencyError(EventBusError):
    """An event-store append found another writer's events at the expected version."""
