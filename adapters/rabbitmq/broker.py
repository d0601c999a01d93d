"""The `Broker` of `amqp://` and `amqps://`: RabbitMQ through aio-pika.

One connection per bus (kept alive by `Link`), one confirm-mode publishing channel
(`Publisher`), one channel per consumed queue (`GroupConsumer`), and short-lived channels
for declarations and dead-letter tools (an AMQP error closes the channel it happens on,
so those never share a channel with traffic).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel

from eventbus.toolkit import (
    DEAD_LETTER_HEADERS,
    Capabilities,
    Consumer,
    DeadLetter,
    Deliver,
    LinkState,
    Message,
    PublishError,
    ReceiveReply,
    Select,
    Settings,
    SubscriptionSpec,
    from_amqp,
    get_logger,
    header_text,
    subscription_options,
)

from .consumer import GroupConsumer
from .deadletters import BROKER_COUNTS, Sweep
from .link import LOST, Link
from .properties import BOOKKEEPING, ROUTING_KEY_HEADER, copy_of, outgoing, routing_key_of
from .publisher import Publisher
from .replies import RabbitMQReplyChannel, send_reply
from .settings import (
    RabbitMQSettings,
    SubscriptionOptions,
    load_rabbitmq_settings,
    parse_url,
    tls_context,
)
from .tables import install as install_tables
from .tolerant import dubious, install, sanitized_table
from .topology import GroupTopology, dead_letter_queue, route_exchange

#: headers RabbitMQ adds when it dead-letters (our wait queues); dropped on replay
_BROKER_DEATH_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)
_REPLAY_DROPS = frozenset(
    name.lower()
    for name in (*DEAD_LETTER_HEADERS, *_BROKER_DEATH_HEADERS, *BOOKKEEPING, *BROKER_COUNTS)
)


class RabbitMQBroker:
    def __init__(self, settings: Settings) -> None:
        install()  # frames a producer can break pamqp with never drop the connection
        install_tables()  # header tables of text encoded in one loop (the same bytes)
        self.settings: RabbitMQSettings = load_rabbitmq_settings(dict(settings.options))
        self.capabilities = Capabilities(
            shared_across_processes=True,
            delayed_retry=True,
            request_reply=True,
            replays_history_to_new_groups=False,
            unroutable_is_error=self.settings.mandatory,
            type_always_present=True,
            system="rabbitmq",
        )
        self.target = parse_url(settings.url)
        self._shutdown_timeout = settings.shutdown_timeout
        self.link = Link(self.target, self.settings, tls_context(self.target, self.settings))
        self.publisher = Publisher(
            self.link,
            self.settings.confirm_window,
            self.settings.publish_timeout,
            mandatory=self.settings.mandatory,
        )
        self._consumers: list[GroupConsumer] = []
        #: the latest dead-letter pass (its `peak`: the most unacknowledged at once)
        self.last_sweep: Sweep | None = None
        self._log = get_logger(broker=self.target.redacted)

    def __repr__(self) -> str:
        return f"RabbitMQBroker({self.target.redacted!r})"

    async def start(self) -> None:
        await self.link.start()

    def state(self) -> LinkState:
        """The connection now (no I/O): connected to which node, or the last error; and
        how many times it reconnected since `start`."""
        return self.link.state()

    async def close(self) -> None:
        await self.publisher.flush(self._shutdown_timeout)
        for consumer in self._consumers:
            await consumer.close()
        self._consumers.clear()
        await self.publisher.close()
        await self.link.close()

    # --- publishing --------------------------------------------------------------------

    async def publish(self, message: Message) -> None:
        await self.publisher.publish_to_stream(
            message.stream, message.type, message.body, outgoing(message)
        )

    async def publish_many(self, messages: list[Message]) -> None:
        """All in flight at once (bounded by the confirm window), written in the given
        order, as few writes as the window allows (`Publisher.send_many`); every publish
        finishes before the first error, if any, is raised."""
        if len(messages) == 1:
            await self.publish(messages[0])
            return
        publishes = [(m.stream, m.type, m.body, outgoing(m)) for m in messages]
        messages.clear()  # the list is ours: the bodies live on in `publishes` alone
        results = await self.publisher.send_many(publishes)
        failed = [r for r in results if r is not None]
        if failed:
            first = failed[0]
            if len(failed) == 1 or not isinstance(first, PublishError):
                raise first
            raise type(first)(f"{len(failed)} of {len(results)} events failed; first: {first}")

    # --- request/reply: direct reply-to (`replies`) ----------------------------------------

    async def reply_channel(self, receive: ReceiveReply) -> RabbitMQReplyChannel:
        return RabbitMQReplyChannel(self.link, self.settings, self._shutdown_timeout, receive)

    async def send_reply(self, address: str, message: Message) -> None:
        await send_reply(self.publisher, address, message)

    # --- consuming ---------------------------------------------------------------------

    async def subscribe(self, spec: SubscriptionSpec, deliver: Deliver) -> Consumer:
        options = subscription_options(SubscriptionOptions, spec, "RabbitMQ")
        topology = GroupTopology(
            stream=spec.stream,
            group=spec.group,
            patterns=spec.patterns,
            queue_type=options.queue_type or self.settings.queue_type,
            single_active_consumer=(
                options.single_active_consumer
                if options.single_active_consumer is not None
                else self.settings.single_active_consumer
            ),
            partitions=options.partitions,
            tiers=spec.retry_tiers,
        )
        async with self.declare_channel() as channel:
            await topology.declare(channel)
        consumer = GroupConsumer(
            self, spec, topology, deliver, options.prefetch or self.settings.prefetch
        )
        await consumer.start()
        self._consumers.append(consumer)
        return consumer

    @asynccontextmanager
    async def declare_channel(self, confirms: bool = False) -> AsyncIterator[AbstractChannel]:
        """A short-lived channel for declarations and tools (in confirm mode if asked)."""
        connection = await self.link.connection()
        aio_channel: Any = await connection.channel(publisher_confirms=confirms)
        channel: AbstractChannel = await aio_channel.get_underlay_channel()
        try:
            yield channel
        finally:
            if not channel.is_closed:
                with suppress(*LOST):
                    await aio_channel.close()

    # --- dead letters ------------------------------------------------------------------

    @asynccontextmanager
    async def _sweep(self, stream: str, group: str) -> AsyncIterator[Sweep]:
        """A pass over the group's dead-letter queue (`deadletters`); settled on exit."""
        queue = dead_letter_queue(stream, group)
        async with self.declare_channel() as channel, self.declare_channel(True) as confirms:
            count = await _message_count(channel, queue)
            sweep = Sweep(channel, confirms, queue, count, self.settings.prefetch)
            self.last_sweep = sweep
            try:
                yield sweep
            finally:
                await sweep.finish()
        if sweep.returning:  # its channel closed: the next tool must count those again
            async with self.declare_channel() as channel:
                await sweep.returned(channel)

    async def dead_letters(self, stream: str, group: str) -> AsyncIterator[DeadLetter]:
        """Read the dead-letter queue without removing anything: every message read is
        moved to the tail (in order, at most `prefetch` unacknowledged at once), and a
        listing stopped early still moves the rest, so the order stays."""
        async with self._sweep(stream, group) as sweep:
            early = False
            try:
                while (got := await sweep.next()) is not None:
                    try:
                        yield _dead_letter(stream, group, got)
                    finally:
                        sweep.keep(got)
            except GeneratorExit:  # the reader stopped: finish the pass, then close
                early = True
            if early:
                await sweep.rest()

    async def replay_dead_letters(
        self, stream: str, group: str, select: Select | None = None
    ) -> int:
        """Send each (selected) dead letter back to its group only (default exchange to
        the group queue, or the group's route exchange when partitioned), confirmed, then
        remove it; the others are kept, in order."""
        entry = await self._entry_of(stream, group)
        if entry is None:
            return 0
        exchange, routing_key = entry
        replayed = 0
        async with self._sweep(stream, group) as sweep:
            while (got := await sweep.next()) is not None:
                if select is not None and not select(_dead_letter(stream, group, got)):
                    sweep.keep(got)
                    continue
                props = got.header.properties
                headers: dict[str, Any] = dict(props.headers or {})
                original_key = headers.get("x-original-routing-key")
                clean = {k: v for k, v in headers.items() if k.lower() not in _REPLAY_DROPS}
                if original_key is not None:
                    clean[ROUTING_KEY_HEADER] = original_key
                sweep.send(got, exchange, routing_key, copy_of(props, clean, None))
                replayed += 1
        return replayed

    async def purge_dead_letters(
        self, stream: str, group: str, select: Select | None = None
    ) -> int:
        """Remove each (selected) dead letter; the others are kept, in order."""
        purged = 0
        async with self._sweep(stream, group) as sweep:
            while (got := await sweep.next()) is not None:
                if select is not None and not select(_dead_letter(stream, group, got)):
                    sweep.keep(got)
                else:
                    sweep.drop(got)
                    purged += 1
        return purged

    async def _entry_of(self, stream: str, group: str) -> tuple[str, str] | None:
        """Where messages for exactly this group go in; None if the group does not exist."""
        base = f"{stream}.{group}"
        async with self.declare_channel() as channel:
            try:
                await channel.queue_declare(base, passive=True)
                return "", base
            except aiormq.exceptions.ChannelNotFoundEntity:
                pass
        async with self.declare_channel() as channel:
            try:
                await channel.exchange_declare(route_exchange(stream, group), passive=True)
                return route_exchange(stream, group), ""
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None


async def _message_count(channel: AbstractChannel, queue: str) -> int:
    try:
        ok = await channel.queue_declare(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return 0
    return int(ok.message_count or 0)


def _dead_letter(stream: str, group: str, got: Any) -> DeadLetter:
    props = got.header.properties
    table = props.headers or {}
    raw_headers = sanitized_table(dict(table))[0] if dubious(table) else table
    routing_key = routing_key_of(raw_headers, raw_headers.get("x-original-routing-key"))
    attributes, _attempt = from_amqp(
        raw_headers, _text(props.content_type), _text(props.message_id), _text(routing_key)
    )
    headers = header_text(raw_headers)
    return DeadLetter(
        stream=stream,
        group=group,
        body=got.body,
        headers=headers,
        attributes=attributes,
        key=attributes.get("partitionkey"),
        position=got.delivery.delivery_tag,
    )


def _text(value: Any) -> str | None:
    """A short string of a stored message as valid text (escaped where it was not)."""
    if value is None:
        return None
    if type(value) is str:  # decoded as valid UTF-8 (what was not is an `Escaped`)
        return value
    clean, _escaped = sanitized_table({"v": value})
    return str(clean["v"])
