"""The adapter protocol: the small surface the kernel drives and every broker implements
(adapters reach it through `eventbus.toolkit`).

The kernel decides policy (decoding, validation, retries, dead-letter headers); an adapter
supplies transport: publish durably, deliver messages one at a time per consumer, and
settle each delivery (ack, nack, hand back for a delayed retry, dead-letter).

Flow: broker client -> adapter -> `Deliver` callback (the kernel's pipeline) -> handler,
and back to the adapter only through the `Delivery` methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .settings import Settings


@dataclass(slots=True)
class Message:
    """One outgoing event, transport-neutral.

    `attributes` are the CloudEvents context attributes (id, source, specversion, type,
    time, datacontenttype, and the extensions partitionkey, correlationid, causationid,
    plus custom ones). `attempt` is transport bookkeeping (`x-eventbus-attempt`).
    """

    stream: str
    type: str
    key: str | None
    body: bytes
    attributes: dict[str, str]
    attempt: int = 1

    @property
    def id(self) -> str:
        return self.attributes.get("id", "")


class Delivery:
    """One received message, as the adapter hands it to the kernel.

    Adapters subclass it and implement the four settlement methods. Exactly one of them
    is called for every delivery, and only after the handler finished. On a hot path an
    adapter passes every field positionally, in the order of `__init__` (no keyword
    matching per message).
    """

    __slots__ = (
        "attempt",
        "attributes",
        "body",
        "defect",
        "headers",
        "key",
        "offset",
        "partition",
        "redelivered",
        "routing_key",
        "stream",
    )

    def __init__(
        self,
        stream: str,
        body: bytes,
        attributes: dict[str, str],
        headers: dict[str, Any] | None = None,
        key: str | None = None,
        attempt: int = 1,
        partition: int | None = None,
        offset: int | None = None,
        routing_key: str | None = None,
        redelivered: bool = False,
        defect: str | None = None,
    ) -> None:
        self.stream = stream
        self.body = body
        self.attributes = attributes
        self.headers = headers if headers is not None else {}
        self.key = key
        self.attempt = attempt
        self.partition = partition
        self.offset = offset
        self.routing_key = routing_key
        self.redelivered = redelivered
        #: why the adapter could not decode this message faithfully (invalid UTF-8 in a
        #: field, ...): the pipeline dead-letters it at once with this reason
        self.defect = defect

    async def ack(self) -> None:
        """The handler finished: the broker may forget this message (RabbitMQ ack, Kafka
        offset marked finished, committed once contiguous)."""
        raise NotImplementedError

    async def nack(self) -> None:
        """Give the message back untouched for redelivery (graceful stop mid-retry)."""
        raise NotImplementedError

    async def retry_later(self, attempt: int, delay: float) -> None:
        """Delayed retry: store a copy for redelivery after `delay` seconds carrying
        `attempt` as its attempt number, then ack this one. Durable before it returns."""
        raise NotImplementedError

    async def dead_letter(self, info: dict[str, str]) -> None:
        """Store the message, body byte-identical and headers kept, in the group's
        dead-letter destination with `info` (the x-original-* / x-exception-* headers)
        added, then ack this one. Durable before it returns."""
        raise NotImplementedError

    # exactly-once subscriptions (`Capabilities.transactions`) only

    async def stage(self, message: Message) -> None:
        """Hold `message`, an event the handler publishes (`ctx.publish`), until this
        delivery is settled: `ack` stores it together with the settlement in one broker
        transaction (nothing of it is visible before, and both or neither commit); any
        other settlement drops it. Raises (a `PublishError`, `MessageTooLarge`) if the
        message can never be stored, so that the handler fails instead of the commit."""
        raise NotImplementedError

    def unstage(self) -> None:
        """Drop what the handler staged so far: its attempt failed and is retried."""


Deliver = Callable[[Delivery], Awaitable[None]]

#: `SubscriptionSpec.failed(what, error)`: the subscription's consumer died
Failed = Callable[[str, BaseException], None]


def _unsupervised(what: str, error: BaseException) -> None:
    from .log import get_logger

    get_logger().error("consumer.died", what=what, error=repr(error), exc_info=error)


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """What the adapter must attach: a group reading patterns of one stream."""

    stream: str
    group: str
    patterns: tuple[str, ...]
    #: event types a typed subscription handles (None: untyped, every matching type)
    types: frozenset[str] | None
    concurrency: int = 1
    #: delays (seconds) of the delayed-retry tiers, one per retry; empty if not delayed
    retry_tiers: tuple[float, ...] = ()
    #: adapter-specific options given to `subscribe(**options)`
    options: dict[str, Any] = field(default_factory=dict)
    #: consume-transform-produce in broker transactions (`Capabilities.transactions`):
    #: deliveries stage their handler's events and commit them with the settlement
    exactly_once: bool = False
    #: the adapter calls this (on the event loop) when the consumer died unexpectedly: a
    #: task or thread that should run until `close` ended. The bus logs it, reports itself
    #: unhealthy and stops, so no member is left half-alive holding a group membership.
    failed: Failed = field(default=_unsupervised, compare=False)


def supervise(
    task: asyncio.Task[Any], spec: SubscriptionSpec, what: str, ending: Callable[[], bool]
) -> None:
    """Report `task` through `spec.failed` if it ends (returns, raises, or is cancelled)
    while `ending()` is false, i.e. not because the consumer is being closed."""

    def done(finished: asyncio.Task[Any]) -> None:
        if ending():
            return
        if finished.cancelled():
            error: BaseException = asyncio.CancelledError(f"{what} was cancelled")
        else:
            error = finished.exception() or RuntimeError(f"{what} ended unexpectedly")
        spec.failed(what, error)

    task.add_done_callback(done)


class Consumer(Protocol):
    async def pause(self) -> None:
        """Stop delivering new messages (in-flight ones are still settled)."""

    async def close(self) -> None:
        """Flush acks/commits and detach; unsettled messages go back to the broker."""


@dataclass(frozen=True, slots=True)
class LinkState:
    """How an adapter's connection to its broker is now (`Broker.state()`), for
    `bus.health()` and the readiness probe."""

    connected: bool
    #: why not connected (the last error), or where it is connected (a node); never a secret
    detail: str = ""
    #: reconnections since `start` (a flapping link shows here)
    reconnects: int = 0


@dataclass(frozen=True, slots=True)
class ConsumerState:
    """Whether a subscription's consumer is attached to the broker now (`Consumer.state()`):
    consuming its queues (RabbitMQ), a member of its group (Kafka). Not attached while the
    connection is down or being recovered; `detail` says why."""

    attached: bool
    detail: str = ""


@runtime_checkable
class ReportsState(Protocol):
    """Optional, for brokers and consumers: their state now, without I/O (cheap: a
    readiness probe may ask every second). An adapter without it counts as connected /
    attached while the bus runs."""

    def state(self) -> LinkState | ConsumerState: ...


@runtime_checkable
class ReportsBacklog(Protocol):
    """Optional, for consumers: how many events wait for the group, per source (Kafka
    consumer lag per `topic[partition]`, RabbitMQ ready messages per queue). The bus polls
    it every `EVENTBUS_BACKLOG_INTERVAL` seconds, never per message; it may do I/O, and
    returns None when it cannot tell now (the broker is down)."""

    async def backlog(self) -> dict[str, int] | None: ...


@dataclass(slots=True)
class DeadLetter:
    """One dead letter: the raw body and headers as stored, and what was decoded of them."""

    stream: str
    group: str
    body: bytes
    headers: dict[str, str]
    attributes: dict[str, str]
    key: str | None = None
    #: broker position (Kafka offset, memory index, RabbitMQ delivery tag while listing)
    position: int | None = None

    @property
    def reason(self) -> str:
        return (
            f"{self.headers.get('x-exception-type', '')}: "
            f"{self.headers.get('x-exception-message', '')}"
        )

    @property
    def attempts(self) -> int:
        try:
            return int(self.headers.get("x-attempts", "0") or 0)
        except ValueError:  # written by another tool: never break a listing
            return 0

    @property
    def envelope(self) -> Any:
        from .event import Envelope

        return Envelope.from_attributes(self.attributes, self.body, self.stream, self.key)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker honestly offers; the conformance suite reads these flags."""

    #: several bus instances (processes) share the broker, so redelivery survives a process
    shared_across_processes: bool = True
    #: delayed retries by the broker (wait queues / retry topics / timers)
    delayed_retry: bool = True
    #: request/reply (`bus.request`): the broker implements `RequestReply`
    request_reply: bool = False
    #: a group created after events were published still receives them (Kafka earliest)
    replays_history_to_new_groups: bool = False
    #: an event with no group bound is an error (RabbitMQ mandatory)
    unroutable_is_error: bool = False
    #: the transport carries header values and keys as bytes, so a foreign producer can
    #: send invalid UTF-8 there (memory:// carries text only)
    binary_headers: bool = True
    #: every event has a type (RabbitMQ: the routing key is the type)
    type_always_present: bool = False
    #: deliveries carry a partition and an offset (Kafka), recorded in dead letters as
    #: `x-original-partition` / `x-original-offset`
    records_offsets: bool = False
    #: deliveries carry the routing key (RabbitMQ), recorded as `x-original-routing-key`
    records_routing_keys: bool = False
    #: a redelivered message says so (`ctx.redelivered`); Kafka cannot tell
    marks_redeliveries: bool = True
    #: exactly-once consume-transform-produce (`subscribe(..., exactly_once=True)`): the
    #: events a handler publishes and the settlement of its delivery (offsets, retry and
    #: dead-letter copies) commit in one broker transaction (Kafka transactions)
    transactions: bool = False
    #: the OpenTelemetry `messaging.system` of this broker (`rabbitmq`, `kafka`, ...)
    system: str = "unknown"


@runtime_checkable
class Broker(Protocol):
    capabilities: Capabilities

    async def start(self) -> None:
        """Connect. Raise ConfigurationError / ConnectionError with a clear message."""

    async def close(self) -> None:
        """Flush pending publishes and disconnect."""

    async def publish(self, message: Message) -> None:
        """Store one event durably; return only when the broker confirmed it."""

    async def publish_many(self, messages: list[Message]) -> None:
        """Store several events durably (pipelined); return when all are confirmed.

        The list is the adapter's: it may empty it once its client holds the records, so
        that the messages are freed while the confirmations are awaited (a batch of
        thousands kept alive that long is promoted to the collector's oldest generation,
        whose full passes then cost every event). The caller reads nothing of it after."""

    async def subscribe(self, spec: SubscriptionSpec, deliver: Deliver) -> Consumer:
        """Declare the group's topology and start delivering. When this returns, every
        event published from then on reaches the group ("ready means ready")."""

    def dead_letters(self, stream: str, group: str) -> AsyncIterator[DeadLetter]:
        """The dead letters of a group, oldest first, without removing them. Streamed: each
        is yielded as it is read, never after reading them all, and the adapter holds a
        bounded number beyond the one it yields however many there are. A reader that
        stops early closes the iterator (`aclose`); the letters stay as they were."""

    async def replay_dead_letters(self, stream: str, group: str) -> int:
        """Send every dead letter of a group back to that group only (attempt reset, the
        event id kept); return how many. A replayed dead letter is not listed any more.
        (A `SelectsDeadLetters` broker also takes `select`.)"""


#: which dead letters an operation takes: called once per dead letter, oldest first, on the
#: event loop, before the operation moves it (it may count, e.g. to take the first N only)
Select = Callable[[DeadLetter], bool]


@runtime_checkable
class SelectsDeadLetters(Protocol):
    """Optional, for brokers: replay and purge a selection of the dead letters of a group.

    The dead letters `select` returns False for stay in the dead-letter destination, in
    their order, each once, and are listed as before. `select=None` takes all of them.
    Without it (an older or smaller adapter), the bus replays all dead letters only and
    purges none: `bus.replay_dead_letters(..., select=...)` and `bus.purge_dead_letters`
    raise `Unsupported`.
    """

    async def replay_dead_letters(
        self, stream: str, group: str, select: Select | None = None
    ) -> int:
        """Replay the selected dead letters (as `Broker.replay_dead_letters`); -> how many."""

    async def purge_dead_letters(
        self, stream: str, group: str, select: Select | None = None
    ) -> int:
        """Delete the selected dead letters for good; -> how many."""


class SyncTransport(Protocol):
    """The broker side of the sync face (pika / confluent Producer): blocking, confirmed.
    A `system` attribute (`"rabbitmq"`, ...) names the broker in traces, optionally."""

    def publish(self, messages: Sequence[Message]) -> None: ...

    def close(self) -> None: ...


class Adapter(Protocol):
    """What the `eventbus.adapters` entry point of a URL scheme resolves to."""

    def create_broker(self, settings: Settings) -> Broker: ...

    def create_sync_transport(self, settings: Settings) -> SyncTransport: ...


# --- request/reply (optional) ------------------------------------------------------------

#: the CloudEvents extension of a request naming where its reply goes
REPLY_TO = "replyto"
#: the CloudEvents extension of a reply naming the request (its id) it answers
IN_REPLY_TO = "inreplyto"


@dataclass(slots=True)
class Reply:
    """One reply as a requester's transport received it: the CloudEvents attributes
    (`inreplyto` names the request it answers) and the body."""

    attributes: dict[str, str]
    body: bytes


#: `receive(reply)`: the kernel's side of a reply channel, called on the bus's event loop
ReceiveReply = Callable[[Reply], None]


class ReplyChannel(Protocol):
    """Where the replies to this bus's requests arrive (`RequestReply.reply_channel`)."""

    #: what a request carries as its `replyto` attribute (RabbitMQ: the direct reply-to
    #: pseudo-queue, which the broker rewrites per channel; Kafka: this process's reply
    #: topic; memory: an in-process inbox)
    address: str

    async def publish(self, message: Message) -> None:
        """Publish a request (an ordinary event whose `replyto` is `address`), durably as
        `Broker.publish`, such that its replies reach this channel."""

    async def close(self) -> None:
        """Stop receiving replies; remove what was created for them (Kafka's topic)."""


@runtime_checkable
class RequestReply(Protocol):
    """Optional, for brokers whose `capabilities.request_reply` is true: the transport of
    request/reply. The kernel matches replies to requests (by `inreplyto`), keeps the
    timeouts and counts what is dropped; an adapter only carries the messages."""

    async def reply_channel(self, receive: ReceiveReply) -> ReplyChannel:
        """Open the bus's reply channel: when this returns it receives every reply sent to
        its `address` from then on, each handed to `receive` on the event loop."""

    async def send_reply(self, address: str, message: Message) -> None:
        """Send one reply to the `address` a request carried, at most once (not stored
        for a requester that is gone). Raise if it cannot be sent or the address is not a
        reply address of this broker (a producer must not make a responder write into a
        stream)."""
