"""One queue consumed on a channel of its own.

A channel per queue makes the hand-over of a partition one atomic step on the broker:
closing the channel returns every message it still holds to the queue, in delivery
order, and only then activates the next waiting single-active consumer. (`basic.cancel`
would not do: the next consumer becomes active at once while the cancelled one still
holds unacknowledged messages, and whatever it gives back later lands behind messages
the new consumer already has: per-key order broken.)

`release()` is the graceful hand-over: stop passing deliveries on (the consumer checks
`releasing`), wait until every delivery already passed to the kernel is settled, then
close the channel.

Acks are coalesced: an ack is written at the end of the loop turn in which it was made,
together with the acks made in the same turn. A run of acked messages that have no
unsettled message below them on the channel goes as one `basic.ack(multiple=True)` (a
batch handler's items, for one); any other ack goes alone. A multiple ack never covers
a message the channel delivered and nobody acked (one held for the channel's close, one
being rejected): every delivered tag is recorded as it arrives, and a rejected one is
forgotten only once its reject is written. Closing the channel writes pending acks first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiormq.abc import AbstractChannel, DeliveredMessage

from eventbus.toolkit import get_logger

from .link import LOST, Link, _describe

if TYPE_CHECKING:
    from .delivery import RabbitMQDelivery

Sink = Callable[["Attachment", DeliveredMessage], None]
_log = get_logger()


class Attachment:
    def __init__(
        self, queue: str, aio_channel: Any, channel: AbstractChannel, generation: int = 0
    ) -> None:
        self.queue = queue
        self.channel = channel
        self.tag = ""
        #: the link generation (connection) the channel was opened on
        self.generation = generation
        #: set once a hand-over started: deliveries of this attachment are not passed on
        self.releasing = False
        self._aio_channel = aio_channel
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: every tag the channel delivered and that is not acked or rejected yet, in
        #: delivery order: None while unsettled, the delivery once acked (ack not written)
        self._tags: dict[int, RabbitMQDelivery | None] = {}
        #: acks made and not written yet
        self._pending = 0
        #: acked tags that were not recorded arriving (written alone)
        self._loose: list[tuple[int, RabbitMQDelivery]] = []
        self._flusher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Attachment({self.queue!r}, inflight={self._inflight}, live={self.is_live})"

    @classmethod
    async def open(
        cls, link: Link, queue: str, prefetch: int, tag: str | None, sink: Sink
    ) -> Attachment:
        connection = await link.connection()
        generation = link.generation
        aio_channel: Any = await connection.channel(publisher_confirms=False)
        channel: AbstractChannel = await aio_channel.get_underlay_channel()
        attachment = cls(queue, aio_channel, channel, generation)

        async def on_message(message: DeliveredMessage) -> None:
            attachment._tags[int(message.delivery.delivery_tag or 0)] = None  # type: ignore[union-attr]
            sink(attachment, message)

        try:
            await channel.basic_qos(prefetch_count=prefetch)
            ok = await channel.basic_consume(queue, on_message, no_ack=False, consumer_tag=tag)
        except BaseException:
            await attachment.close()
            raise
        attachment.tag = str(ok.consumer_tag)
        return attachment

    @property
    def is_live(self) -> bool:
        return not self.channel.is_closed

    @property
    def consuming(self) -> bool:
        """Its basic.consume is registered (the broker did not cancel it: a deleted queue
        cancels its consumers and leaves their channels open)."""
        consumers: Any = getattr(self.channel, "consumers", None)  # aiormq's registry
        return consumers is None or self.tag in consumers

    def closed_reason(self) -> str:
        """Why the channel closed (for health; "" while it is open)."""
        if not self.channel.is_closed:
            return ""
        closing = self.channel.closing  # done: the channel's own future, no observer
        if closing.cancelled():
            return "closed"
        exc = closing.exception()
        if exc is None or isinstance(exc, asyncio.CancelledError):
            return "closed"
        if type(exc) is Exception and not exc.args:  # aiormq: closed with its connection
            return "closed with its connection"
        return _describe(exc)

    def on_closed(self, callback: Callable[[], None]) -> None:
        self.channel.closing.add_done_callback(lambda _: callback())

    # --- deliveries in the kernel ------------------------------------------------------

    def submitted(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def settled(self) -> None:
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()

    # --- acks ---------------------------------------------------------------------------

    def ack(self, tag: int, delivery: RabbitMQDelivery) -> None:
        """Ack `tag` at the end of this loop turn (with the other acks of the turn)."""
        if tag in self._tags:
            self._tags[tag] = delivery
        else:  # not seen arriving (never expected): acked alone, never in a multiple ack
            self._loose.append((tag, delivery))
        self._pending += 1
        self._schedule()

    def forget(self, tag: int) -> None:
        """`tag` was rejected (its reject is written): acks above it may now go as one."""
        if tag in self._tags:
            del self._tags[tag]
            if self._pending:
                self._schedule()

    def _schedule(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            leading: list[tuple[int, RabbitMQDelivery]] = []
            alone: list[tuple[int, RabbitMQDelivery]] = []
            blocked = False
            for tag, delivery in self._tags.items():
                if delivery is None:
                    blocked = True
                else:
                    (alone if blocked else leading).append((tag, delivery))
            for tag, _ in leading:
                del self._tags[tag]
            for tag, _ in alone:
                del self._tags[tag]
            alone += self._loose
            self._loose = []
            self._pending = 0
            if leading:
                await self._write_ack(leading[-1][0], len(leading) > 1, leading)
            for tag, delivery in alone:
                await self._write_ack(tag, False, [(tag, delivery)])

    async def _write_ack(
        self, tag: int, multiple: bool, acked: list[tuple[int, RabbitMQDelivery]]
    ) -> None:
        delivery = acked[-1][1]
        try:
            written = not self.channel.is_closed and await delivery.write(
                self.channel.basic_ack, tag, multiple=multiple
            )
        except LOST:
            written = False
        except Exception as exc:  # never lose the acks behind it to a surprise
            _log.warning("rabbitmq.ack_failed", error=repr(exc)[:300])
            written = False
        if not written:  # the broker redelivers them
            for _, each in acked:
                each.dropped("ack")

    async def flush(self) -> None:
        """Write the acks made so far (before the channel closes)."""
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(flusher)
        with contextlib.suppress(Exception):
            await self._flush()

    # --- leaving -----------------------------------------------------------------------

    async def release(self) -> None:
        """Graceful hand-over: let what the kernel has of this queue settle, then close."""
        self.releasing = True
        if self.is_live and self._inflight:
            idle = asyncio.ensure_future(self._idle.wait())
            try:
                await asyncio.wait(
                    [idle, self.channel.closing], return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                idle.cancel()
        await self.close()

    async def cancel(self) -> None:
        """Stop the broker sending more (competing consumers only: see the module doc)."""
        if self.is_live:
            with contextlib.suppress(*LOST):
                await self.channel.basic_cancel(self.tag)

    async def close(self) -> None:
        """Close the channel: the broker takes back every unacknowledged message (acks
        written before travel first: frames of a connection keep their order)."""
        if self.is_live:
            await self.flush()
            with contextlib.suppress(*LOST):
                await self._aio_channel.close()
