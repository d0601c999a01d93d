"""The adapter toolkit: everything an adapter (ours in `eventbus.adapters`, or a third
party's) may use of the kernel, declared in one place. The user API is `eventbus`; an
adapter imports from here only (CI checks it with import-linter).

What is broker-neutral is written here once:

- the adapter protocol an adapter implements (`Broker`, `Consumer`, `Delivery`,
  `SyncTransport`, `Adapter`) and what flows through it (`Message`, `SubscriptionSpec`,
  `DeadLetter`, `Capabilities`);
- the CloudEvents bindings (`to_kafka_headers`, `from_amqp`, ...), ids for id-less
  events (`derived_id`) and the dead-letter headers;
- the names of a group's side channels (`dead_letter_name`, `retry_name`, `replay_name`);
- options (`subscription_options`), connection targets whose repr hides the password
  (`RedactedTarget`);
- dead-letter tools: `Select` / `SelectsDeadLetters` (replay and purge a selection);
- health: `LinkState` / `ConsumerState` (`state()`, optional) and `backlog()`
  (optional), what `bus.health()` and the readiness probe read;
- request/reply (optional, `Capabilities.request_reply`): `RequestReply` (a broker's
  `reply_channel` and `send_reply`), `ReplyChannel`, `Reply` and the `replyto` /
  `inreplyto` attribute names;
- consumer mechanics: `supervise` (a consumer that dies is reported, never half-alive)
  and `finish_task` (the stop sequence: let the task finish, then cancel it);
- options, errors and logging.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from .deadletter import DEAD_LETTER_HEADERS
from .errors import ConfigurationError, MessageTooLarge, PublishError, UnroutableError
from .log import get_logger
from .protocol import (
    IN_REPLY_TO,
    REPLY_TO,
    Adapter,
    Broker,
    Capabilities,
    Consumer,
    ConsumerState,
    DeadLetter,
    Deliver,
    Delivery,
    Failed,
    LinkState,
    Message,
    ReceiveReply,
    Reply,
    ReplyChannel,
    ReportsBacklog,
    ReportsState,
    RequestReply,
    Select,
    SelectsDeadLetters,
    SubscriptionSpec,
    SyncTransport,
    supervise,
)
from .routing import matches_any
from .settings import Settings, is_secret_key, parse_options, redact_mapping, redact_url
from .wire import (
    AMQP_PREFIX,
    ATTEMPT_HEADER,
    KAFKA_PREFIX,
    derived_id,
    from_amqp,
    from_kafka_headers,
    header_text,
    new_id,
    to_amqp,
    to_kafka_headers,
)


def dead_letter_name(stream: str, group: str) -> str:
    """The dead-letter destination of a group: `<stream>.<group>.dlq` (DESIGN §3.5)."""
    return f"{stream}.{group}.dlq"


def retry_name(stream: str, group: str, tier: int) -> str:
    """Delayed-retry tier `tier` of a group: `<stream>.<group>.retry.<tier>`."""
    return f"{stream}.{group}.retry.{tier}"


def replay_name(stream: str, group: str) -> str:
    """Where replayed dead letters of a group go (read by that group only)."""
    return f"{stream}.{group}.replay"


M = TypeVar("M", bound=BaseModel)


def subscription_options(model: type[M], spec: SubscriptionSpec, broker: str) -> M:
    """`bus.subscribe(..., **options)` validated by the adapter's `model`; an unknown
    option or a bad value is a `ConfigurationError` naming it and the broker."""
    return parse_options(
        model, spec.options, label=f"{broker} subscribe() option", prefix="subscribe(): "
    )


class RedactedTarget:
    """Base of an adapter's connection target (parsed from the URL): its `repr` is the
    redacted URL only, so a password never reaches a log line. Subclasses are dataclasses
    with `repr=False` and a `redacted: str` field."""

    redacted: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.redacted!r})"


def lazy_package(
    package: str, where: dict[str, str], adapter_class: str, requires: tuple[str, ...] = ()
) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) for an adapter package: importing the package
    needs nothing beyond eventbus; `adapter` (an `adapter_class()`) and the names in
    `where` (name -> submodule) load on first use, with the client libraries they need
    (`requires` are imported up front too), so a missing extra surfaces where the
    registry reports it clearly."""
    namespace = sys.modules[package].__dict__

    def load(name: str) -> Any:
        if name == "adapter":
            for module in requires:
                importlib.import_module(module)
            value: Any = load(adapter_class)()
        elif name in where:
            value = getattr(importlib.import_module(where[name], package), name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    return load


async def finish_task(task: asyncio.Task[Any] | None, grace: float = 0.05) -> None:
    """The consumer stop sequence: give `task` `grace` seconds to finish on its own (it was
    told to stop), then cancel it and wait until it is gone. The task is shielded while it
    finishes, so a cancellation of the caller does not cut a settlement short."""
    if task is None or task.done():
        return
    try:
        async with asyncio.timeout(grace):
            await asyncio.shield(task)
    except TimeoutError:  # stuck in a handler past the shutdown timeout
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


__all__ = [
    "AMQP_PREFIX",
    "ATTEMPT_HEADER",
    "DEAD_LETTER_HEADERS",
    "IN_REPLY_TO",
    "KAFKA_PREFIX",
    "REPLY_TO",
    "Adapter",
    "Broker",
    "Capabilities",
    "ConfigurationError",
    "Consumer",
    "ConsumerState",
    "DeadLetter",
    "Deliver",
    "Delivery",
    "Failed",
    "LinkState",
    "Message",
    "MessageTooLarge",
    "PublishError",
    "ReceiveReply",
    "RedactedTarget",
    "Reply",
    "ReplyChannel",
    "ReportsBacklog",
    "ReportsState",
    "RequestReply",
    "Select",
    "SelectsDeadLetters",
    "Settings",
    "SubscriptionSpec",
    "SyncTransport",
    "UnroutableError",
    "dead_letter_name",
    "derived_id",
    "finish_task",
    "from_amqp",
    "from_kafka_headers",
    "get_logger",
    "header_text",
    "is_secret_key",
    "lazy_package",
    "matches_any",
    "new_id",
    "parse_options",
    "redact_mapping",
    "redact_url",
    "replay_name",
    "retry_name",
    "subscription_options",
    "supervise",
    "to_amqp",
    "to_kafka_headers",
]
