"""Dead-letter tools on RabbitMQ: list, replay and purge the queue `<stream>.<group>.dlq`.

AMQP 0-9-1 cannot browse a queue: a message read stays unacknowledged until it is
settled, and one given back by closing the channel is redelivered with its delivery count
raised (a quorum queue with a delivery limit, the default of RabbitMQ 4, drops it after
enough of those). So the tools never give a message back. One `Sweep` consumes the
messages the queue holds when it starts, oldest first, each exactly once, and settles
every one of them:

- a *kept* one is moved to the tail: published to the same queue (body, properties and
  headers as stored, the broker's delivery count dropped), confirmed, then acked;
- a *taken* one is replayed (published to the group, confirmed, then acked) or purged
  (acked).

Kept messages end the pass in the order they had, each once; dead letters that arrive
during a pass are newer and land among them. The pass consumes with a prefetch of
`window`, so at most `window` messages are unacknowledged at once whatever the queue
holds. Its end is where a consumer is delicate:

- it must receive no message beyond the ones it counted (the moved copies come next):
  it sends the last `window` acks only once it has read them all;
- a quorum queue applies acks asynchronously (a busy client stashes them), and gives
  back whatever is unacknowledged when the channel closes, so an ack not applied yet
  would leave a message twice; and messages on their way to a consumer being cancelled
  are given back out of order. So after the last acks the pass waits until the queue
  has refilled its prefetch (it delivers only once every ack is applied) or has nothing
  more to deliver, then cancels (which sends any stashed ack first), then closes: the
  messages it received beyond the pass go back to the head, in order.

A listing is a pass that keeps everything; one stopped early still finishes its pass
(keeping the rest without decoding it), so the order stays. A pass that fails or is
cancelled midway leaves the messages it did not settle at the head and those it kept at
the tail: their order changes, none is lost. A connection lost between a copy's confirm
and the ack of its original leaves that message twice. Run one tool at a time on a
group: two passes at once take each other's copies.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress
from functools import partial
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel
from pamqp import commands as spec

from eventbus.toolkit import PublishError

from .properties import copy_of
from .tolerant import dubious

#: headers the broker keeps on a message of a quorum queue (its redeliveries): a moved or
#: replayed copy starts afresh
BROKER_COUNTS = frozenset(("x-delivery-count", "x-acquired-count"))


#: a pass waiting this long for a delivery checks whether the queue was emptied meanwhile
IDLE = 1.0
#: how long a pass waits, after its channel closed, for the broker to put back what it
#: received beyond its count
RETURN_WAIT = 10.0


class Sweep:
    """One pass over a queue (see the module docstring), on a channel of its own."""

    def __init__(
        self,
        channel: AbstractChannel,
        confirms: AbstractChannel,
        queue: str,
        count: int,
        window: int,
    ) -> None:
        #: the channel the pass consumes on, and one in confirm mode it publishes on
        self.channel = channel
        self.confirms = confirms
        self.queue = queue
        #: messages of the pass not read yet
        self.remaining = count
        self.window = window
        self._ready: asyncio.Queue[Any] = asyncio.Queue()
        self._arrived = asyncio.Event()
        #: messages delivered to the pass, and those of them `next` handed out
        self.received = 0
        self.read = 0
        self._consumer: str | None = None
        #: acks that may go out before the pass read every message (see the docstring)
        self._early_acks = max(count - window, 0)
        #: [delivery tag, settled] of every message read and not acked, in delivery order
        self._order: deque[list[Any]] = deque()
        #: settled messages not acked yet; acks go out `_ack_batch` at a time (or when
        #: the pass waits for deliveries)
        self._settled = 0
        self._ack_batch = max(window // 4, 1)
        self._ack_pending = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None
        #: the messages the queue holds once the pass is over: those ready after its
        #: consumer was cancelled, and the ones delivered to it and not acked (received
        #: beyond its count, or not settled by a pass that failed), which go back when its
        #: channel closes and which the broker handles a moment later (`returned`); None
        #: if it holds none
        self.ready_after: int | None = None
        #: messages read and not acked now
        self.unacked = 0
        #: the most messages delivered to the pass and not acked at once (tests)
        self.peak = 0

    async def next(self) -> Any | None:
        """The next message of the pass (unacknowledged; settle it with `keep`, `send` or
        `drop`), or None once the pass read every message it counted at the start."""
        while True:
            self._raise()
            if self.remaining <= 0:
                return None
            if self._consumer is None:
                await self.channel.basic_qos(prefetch_count=self.window)
                ok = await self.channel.basic_consume(self.queue, self._received)
                self._consumer = ok.consumer_tag
            if self._ready.empty():
                self._send_acks()  # the broker delivers as acks free its prefetch
                try:
                    async with asyncio.timeout(IDLE):
                        got = await self._ready.get()
                except TimeoutError:
                    await self._check()
                    continue
            else:
                got = self._ready.get_nowait()
            if got is None:  # a settlement failed: raise it
                continue
            self.remaining -= 1
            self.read += 1
            self.unacked += 1
            return got

    async def _received(self, message: Any) -> None:
        self._ready.put_nowait(message)  # aiormq starts one task per delivery, in order
        self.received += 1
        self.peak = max(self.peak, self.outstanding())
        self._arrived.set()

    def outstanding(self) -> int:
        """Messages delivered to the pass and not acked now (what the broker counts as
        unacknowledged): read and unsettled, or not read yet."""
        return self.unacked + self.received - self.read

    async def _check(self) -> None:
        """Nothing arrived for a while: give up if the channel closed, end the pass if
        the queue has nothing left to deliver (emptied by someone else)."""
        if self.channel.is_closed:
            raise ConnectionError(f"the channel reading {self.queue!r} closed")
        ok = await self.channel.queue_declare(self.queue, passive=True)
        if not ok.message_count and self._ready.empty():
            self.remaining = 0

    def keep(self, got: Any) -> None:
        """Move the message to the tail of the queue (confirmed), then ack it."""
        props = got.header.properties
        table = props.headers or {}
        headers = {k: v for k, v in table.items() if k.lower() not in BROKER_COUNTS}
        copy = copy_of(props, headers, None, encodable=not dubious(table))
        self.send(got, "", self.queue, copy)

    def send(self, got: Any, exchange: str, routing_key: str, properties: Any) -> None:
        """Publish a copy (confirmed), then ack the message."""
        settled = self._track(got)
        # tasks start in the order they are made, and a publish takes its place on the
        # wire when it starts: the copies reach the queue in the order of the pass
        task = asyncio.create_task(
            self._publish(exchange, routing_key, got.body, properties),
            name=f"eventbus:dlq-sweep:{self.queue}",
        )
        self._tasks.add(task)
        task.add_done_callback(partial(self._published, settled))

    def drop(self, got: Any) -> None:
        """Ack the message: it is gone."""
        self._track(got)[1] = True
        self._settled += 1
        if self._settled >= self._ack_batch:
            self._ack_soon()

    async def rest(self) -> None:
        """Keep every message of the pass not read yet (a listing stopped early)."""
        while (got := await self.next()) is not None:
            self.keep(got)

    async def finish(self) -> None:
        """Wait until every message read is settled, send the acks held back and make
        sure the queue applied them, then cancel the consumer (see the module docstring);
        raise the first failure. Messages received and not read go back to the head when
        the channel closes."""
        counted = self.read + self.remaining
        try:
            while self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._consumer is not None and self._error is None and self.remaining <= 0:
                await self._last_acks(counted)
        finally:
            consumer, self._consumer = self._consumer, None
            if consumer is not None and not self.channel.is_closed:
                await self.channel.basic_cancel(consumer)
                back = self.outstanding()  # given back when the channel closes
                if back:
                    with suppress(aiormq.exceptions.AMQPError, ConnectionError):
                        ok = await self.channel.queue_declare(self.queue, passive=True)
                        self.ready_after = int(ok.message_count or 0) + back
        self._raise()

    async def _last_acks(self, counted: int) -> None:
        """Send the acks held back; return once the queue applied every ack (it refilled
        the prefetch) or has nothing more to deliver now."""
        ok = await self.channel.queue_declare(self.queue, passive=True)
        beyond = min(int(ok.message_count or 0), self.window)
        self._early_acks = len(self._order)
        self._send_acks()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._raise()
        while self.received - counted < beyond:
            self._arrived.clear()
            try:
                async with asyncio.timeout(IDLE):
                    await self._arrived.wait()
            except TimeoutError:
                ok = await self.channel.queue_declare(self.queue, passive=True)
                if not ok.message_count:
                    return  # taken by someone else meanwhile

    @property
    def returning(self) -> bool:
        """Whether the pass held messages when it was cancelled (given back when its channel
        closes)."""
        return self.ready_after is not None

    async def returned(self, channel: AbstractChannel) -> None:
        """After the pass's channel closed: wait until the queue has the messages it gave
        back (so the next tool counts them), at most `RETURN_WAIT` seconds."""
        if not self.returning or self.ready_after is None:
            return
        try:
            async with asyncio.timeout(RETURN_WAIT):
                while True:
                    ok = await channel.queue_declare(self.queue, passive=True)
                    if int(ok.message_count or 0) >= self.ready_after:
                        return
                    await asyncio.sleep(0.01)
        except TimeoutError:  # taken by someone else meanwhile: nothing to wait for
            return

    # --- settling: acks in delivery order, several at once ----------------------------------

    async def _publish(
        self, exchange: str, routing_key: str, body: bytes, properties: spec.Basic.Properties
    ) -> None:
        """Publish on the confirm channel (calls reach the wire in their order: aiormq
        writes under a fair lock); return once the broker confirmed it."""
        where = f"exchange {exchange!r}, routing key {routing_key!r}"
        try:
            confirm = await self.confirms.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
            )
        except aiormq.exceptions.PublishError:
            raise PublishError(
                f"RabbitMQ returned a dead letter of {self.queue!r} ({where}): no queue "
                "took it; was the group's queue deleted?"
            ) from None
        except aiormq.exceptions.DeliveryError:
            confirm = spec.Basic.Nack()
        if not isinstance(confirm, spec.Basic.Ack):
            raise PublishError(f"RabbitMQ did not store a dead letter of {self.queue!r} ({where})")

    def _track(self, got: Any) -> list[Any]:
        entry = [int(got.delivery.delivery_tag or 0), False]
        self._order.append(entry)
        return entry

    def _published(self, settled: list[Any], task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None or task.cancelled():
            if self._error is None:
                self._error = error or asyncio.CancelledError()
                self._ready.put_nowait(None)  # wake `next`
            return
        settled[1] = True
        self._settled += 1
        if self._settled >= self._ack_batch:
            self._ack_soon()

    def _ack_soon(self) -> None:
        if not self._ack_pending:
            self._ack_pending = True
            asyncio.get_running_loop().call_soon(self._send_acks)

    def _send_acks(self) -> None:
        """Ack the settled messages at the front (one `multiple` ack), as far as the
        acks that may go out now allow."""
        self._ack_pending = False
        order, last, count = self._order, 0, 0
        while order and order[0][1] and self._early_acks > 0:
            last = order.popleft()[0]
            self._early_acks -= 1
            count += 1
        if count:
            self.unacked -= count
            self._settled -= count
            task = asyncio.create_task(self._ack_up_to(last))
            self._tasks.add(task)
            task.add_done_callback(self._acked)

    async def _ack_up_to(self, tag: int) -> None:
        await self.channel.basic_ack(tag, multiple=True)

    def _acked(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._error is None and not task.cancelled() and task.exception() is not None:
            self._error = task.exception()
            self._ready.put_nowait(None)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
