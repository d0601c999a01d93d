"""One subscription's consumer: a channel with prefetch on the group's queue(s), feeding the
kernel one delivery at a time, re-attached whenever its channel or connection is lost.

Order: aiormq runs the consume callback for deliveries in arrival order; the callback only
appends to an in-process queue that a single task drains, awaiting `deliver(d)` for each.

Recovery: when the channel dies, the broker takes back every unacknowledged message and
will deliver it again; so deliveries still queued here from the dead channel are dropped,
and settling a delivery of a dead channel does nothing (its ack or reject would have no
channel to travel on; the broker redelivers it). A handler may therefore run twice for
one event after a connection loss: at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from aiormq.abc import AbstractChannel, DeliveredMessage

from eventbus.broker import Deliver, Delivery, SubscriptionSpec
from eventbus.log import get_logger
from eventbus.wire import from_amqp

from .link import LOST
from .properties import copy_of, retry_headers, routing_key_of
from .topology import GroupTopology

if TYPE_CHECKING:
    from .broker import RabbitMQBroker


class RabbitMQDelivery(Delivery):
    __slots__ = ("_consumer", "_message")

    def __init__(self, consumer: GroupConsumer, message: DeliveredMessage) -> None:
        props = message.header.properties
        headers: dict[str, Any] = props.headers or {}
        delivery = message.delivery
        routing_key = routing_key_of(headers, getattr(delivery, "routing_key", None))
        attributes, attempt = from_amqp(headers, props.content_type, props.message_id, routing_key)
        super().__init__(
            stream=consumer.topology.stream,
            body=message.body,
            attributes=attributes,
            headers=headers,
            key=attributes.get("partitionkey"),
            attempt=attempt,
            routing_key=routing_key,
            redelivered=bool(getattr(delivery, "redelivered", False)),
        )
        self._consumer = consumer
        self._message = message

    @property
    def _tag(self) -> int:
        tag = self._message.delivery.delivery_tag  # type: ignore[union-attr]
        return int(tag or 0)

    async def ack(self) -> None:
        channel = self._message.channel
        if channel.is_closed:
            self._consumer.dropped("ack", self)
            return
        try:
            await channel.basic_ack(self._tag, wait=False)
        except LOST:
            self._consumer.dropped("ack", self)

    async def nack(self) -> None:
        channel = self._message.channel
        if channel.is_closed:
            return  # the broker has it back already
        with contextlib.suppress(*LOST):
            await channel.basic_reject(self._tag, requeue=True, wait=False)

    async def retry_later(self, attempt: int, delay: float) -> None:
        consumer = self._consumer
        queue = await consumer.wait_queue(attempt, delay)
        props = self._message.header.properties
        headers = retry_headers(self.headers, self.attributes, self.routing_key, attempt)
        await consumer.broker.publisher.send(
            "", queue, self.body, copy_of(props, headers, self.attributes.get("id"))
        )
        await self.ack()

    async def dead_letter(self, info: dict[str, str]) -> None:
        consumer = self._consumer
        props = self._message.header.properties
        headers = {**self.headers, **info}
        await consumer.broker.publisher.send(
            "", consumer.topology.dlq, self.body,
            copy_of(props, headers, self.attributes.get("id")),
        )
        await self.ack()


class GroupConsumer:
    """The `Consumer` of one subscription."""

    def __init__(
        self,
        broker: RabbitMQBroker,
        spec: SubscriptionSpec,
        topology: GroupTopology,
        deliver: Deliver,
        prefetch: int,
    ) -> None:
        self.broker = broker
        self.spec = spec
        self.topology = topology
        self._deliver = deliver
        self._prefetch = prefetch
        self._inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        self._channel: AbstractChannel | None = None
        self._aio_channel: Any = None
        self._tags: list[str] = []
        self._paused = False
        self._closing = False
        self._attached = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._wait_queues: set[str] = {name for name, _ in topology.tier_queues()}
        self._log = get_logger(stream=topology.stream, group=topology.group)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Attach (raising what the first attach raises), then keep attached."""
        await self._attach()
        self._runner = asyncio.create_task(self._run(), name=f"rabbitmq:{self.topology.base}")
        self._keeper = asyncio.create_task(
            self._keep_attached(), name=f"rabbitmq-keeper:{self.topology.base}"
        )

    async def pause(self) -> None:
        """Stop fetching: cancel the broker consumers; prefetched messages stay unacked
        (and go back to the queue at `close`)."""
        self._paused = True
        channel = self._channel
        if channel is not None and not channel.is_closed:
            for tag in self._tags:
                try:
                    await channel.basic_cancel(tag)
                except LOST:
                    break
        self._inbox.put_nowait(_WAKE)  # unblock the runner so it sees `_paused`

    async def close(self) -> None:
        self._paused = True
        self._closing = True
        runner = self._runner
        if runner is not None and not runner.done():
            self._inbox.put_nowait(_WAKE)
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.shield(runner)
            except TimeoutError:  # stuck in a handler past the shutdown timeout
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        # closing the channel gives every unacknowledged message back to the queue; acks
        # written before travel first (frames of a connection keep their order)
        aio_channel, self._aio_channel, self._channel = self._aio_channel, None, None
        if aio_channel is not None:
            with contextlib.suppress(*LOST):
                await aio_channel.close()

    # --- attaching ---------------------------------------------------------------------

    async def _attach(self) -> None:
        connection = await self.broker.link.connection()
        aio_channel = await connection.channel(publisher_confirms=False)
        channel: AbstractChannel = await aio_channel.get_underlay_channel()
        try:
            await channel.basic_qos(prefetch_count=self._prefetch)
            tags = []
            for queue in self.topology.queues:
                ok = await channel.basic_consume(queue, self._on_message, no_ack=False)
                tags.append(str(ok.consumer_tag))
        except BaseException:
            if not channel.is_closed:
                await aio_channel.close()
            raise
        self._aio_channel, self._channel, self._tags = aio_channel, channel, tags
        self._attached.set()

    async def _keep_attached(self) -> None:
        pause = 0.1
        while not self._closing:
            channel = self._channel
            if channel is not None and not channel.is_closed:
                await asyncio.wait([channel.closing])
                if self._closing:
                    return
                self._log.warning("rabbitmq.consumer_detached", queues=self.topology.queues)
            if self._paused:
                return
            try:
                await self.broker.link.wait_up()
                async with self.broker.declare_channel() as admin:
                    await self.topology.declare(admin)
                await self._attach()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning("rabbitmq.reattach_failed", error=repr(exc), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.broker.settings.max_reconnect_backoff)
                continue
            pause = 0.1
            self._log.info("rabbitmq.consumer_reattached", queues=self.topology.queues)

    async def _on_message(self, message: DeliveredMessage) -> None:
        self._inbox.put_nowait(message)

    async def _run(self) -> None:
        inbox = self._inbox
        deliver = self._deliver
        while True:
            message = await inbox.get()
            if self._paused:
                if self._closing:
                    return
                continue  # left unacked: the channel close at `close` returns it
            if message is _WAKE or message.channel.is_closed:
                continue  # from a dead channel: the broker redelivers it
            await deliver(RabbitMQDelivery(self, message))

    # --- helpers for deliveries --------------------------------------------------------

    async def wait_queue(self, attempt: int, delay: float) -> str:
        name, _tier = self.topology.wait_queue(attempt, delay)
        if name not in self._wait_queues:
            async with self.broker.declare_channel() as admin:
                await self.topology.declare_wait_queue(admin, name, delay)
            self._wait_queues.add(name)
        return name

    def dropped(self, what: str, delivery: Delivery) -> None:
        self._log.info(
            "rabbitmq.settle_dropped",
            what=what,
            event_id=delivery.attributes.get("id"),
            reason="channel closed; the broker redelivers the message",
        )


#: a sentinel that wakes the runner (never delivered)
_WAKE: Any = object()

