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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiormq.abc import AbstractChannel, DeliveredMessage

from .link import LOST, Link, _describe

Sink = Callable[["Attachment", DeliveredMessage], None]


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
            with contextlib.suppress(*LOST):
                await self._aio_channel.close()
