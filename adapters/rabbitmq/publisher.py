"""Confirmed publishing: one channel in confirm mode, pipelined within a bounded window.

Every publish is persistent and `mandatory`; it returns once the broker confirmed it.
Many publishes are in flight at once (up to `confirm_window`), each awaiting its own
confirm, so throughput is not one round trip per message. A batch (`send_many`) fills
the window's free slots in one write (`frames`) and collects its confirms in one
coroutine; its publishes take their tickets, keep their order and recover exactly as
single ones do. A single `send` is written the same way, as a batch of one.

aiormq correlates a `basic.return` with its publish by `message_id` (the event id) and
the broker sends the return before the confirm, so an unroutable event fails its own
publish with `UnroutableError` and nothing else.

Size: a publish that cannot travel (a short string over 255 bytes, properties larger than
one frame) is refused before it is sent (`limits`): RabbitMQ would close the connection.

Order: each publish takes a ticket when it is called and is written only in its turn,
after every earlier publish was written (or gave up), whatever it waited for meanwhile
(the window, a stream declaration, a recovery). So concurrent publishes reach the wire in
the order they were issued; in the common case the turn is already there and costs a
comparison.

Recovery keeps the order: every publish written and not yet confirmed is kept, in
ticket order, in `_pending`. When the channel (or the connection) is lost, one recovery
(`_recover`) holds every new publish back, waits for the link, opens a new channel and
writes all pending publishes again, oldest first, before it lets anything else through.
So a publish issued after another one of the same key never overtakes it, even across a
broker restart; a publish that reached the broker before the loss may be stored twice
(a duplicate is possible, a loss is not). The caller waits up to `publish_timeout`.

A nack fails its publish with `PublishError` (the broker did not store it; retrying it
here could put it behind later publishes of its key) and replaces the channel the same
way (`_nacked`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel
from pamqp import commands as spec

from eventbus.toolkit import (
    PublishError,
    UnroutableError,
    get_logger,
)

from .frames import lost_with, unmatch, write_batch
from .limits import DEFAULT_FRAME_MAX, check_publish
from .link import LOST, Link
from .topology import declare_stream

#: bodies one write of a batch carries, at most (past its first publish): a window of
#: large events in one write would be one buffer of megabytes, fresh memory the kernel
#: maps page by page on every write (measured with 100 KB events: about 60 page faults
#: and twice the system CPU per event of one publish per write); a window of small ones
#: still goes in one write
WRITE_BYTES = 256 * 1024


class _Pending:
    """One publish written and not yet confirmed."""

    __slots__ = (
        "body",
        "channel",
        "exchange",
        "mandatory",
        "match",
        "properties",
        "resend",
        "routing_key",
        "stream",
    )

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        mandatory: bool,
        stream: str | None,
        channel: AbstractChannel | None,
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties
        self.mandatory = mandatory
        self.stream = stream
        #: the channel of the latest write
        self.channel: AbstractChannel | None = channel
        #: the latest write, when a recovery wrote it again
        self.resend: asyncio.Future[Any] | None = None
        #: (channel, delivery tag) of a batch's write (`frames.unmatch`)
        self.match: tuple[AbstractChannel, int] | None = None

    async def write(self, channel: AbstractChannel) -> Any:
        """aiormq's own publish (a recovery's writes; every write where the channel cannot
        take a batch, `frames.batching`): it queues the frames before it first suspends,
        and does not wait for the socket (the confirm says more, later). Lost, not stuck,
        when the channel closes first (`lost_with`)."""
        aio: Any = channel  # `wait` is not on aiormq's abstract channel
        with lost_with(channel):
            return await aio.basic_publish(
                self.body,
                exchange=self.exchange,
                routing_key=self.routing_key,
                properties=self.properties,
                mandatory=self.mandatory,
                wait=False,
            )


class Publisher:
    def __init__(
        self,
        link: Link,
        window: int,
        timeout: float,
        *,
        mandatory: bool = True,
        on_channel: Callable[[AbstractChannel], Awaitable[None]] | None = None,
    ) -> None:
        """`on_channel(channel)`: run on every channel the publisher opens, before anything
        is written on it (the request publisher consumes its direct replies there)."""
        self._link = link
        self._mandatory = mandatory
        self._on_channel = on_channel
        self._timeout = timeout
        self._window = asyncio.Semaphore(window)
        self._channel: AbstractChannel | None = None
        self._declaring = asyncio.Lock()
        #: streams whose exchange was declared on the current channel
        self._declared: set[str] = set()
        #: tickets: every `send` takes the next one when called, and writes only in its
        #: turn (`_next_write`); waiting turns in `_turns`, given-up ones in `_skipped`
        self._tickets = 0
        self._next_write = 0
        self._turns: dict[int, asyncio.Future[None]] = {}
        self._skipped: set[int] = set()
        #: ticket -> publish written and not yet confirmed, oldest first
        self._pending: dict[int, _Pending] = {}
        #: set while a recovery runs: every publish waits for it
        self._recovery: asyncio.Future[None] | None = None
        self._recoverer: asyncio.Task[None] | None = None
        self._closed = False
        self.frame_max = DEFAULT_FRAME_MAX
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._log = get_logger(broker=link.target.redacted)

    async def publish_to_stream(
        self, stream: str, routing_key: str, body: bytes, properties: spec.Basic.Properties
    ) -> None:
        await self.send(
            stream, routing_key, body, properties, stream=stream, mandatory=self._mandatory
        )

    async def send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        *,
        stream: str | None = None,
        mandatory: bool = True,
    ) -> None:
        """Publish and wait for the confirm. `stream`: declare that stream's exchange first
        (once per channel). Copies the adapter makes (retries, dead letters, replays) are
        always mandatory: a copy that reaches no queue must not count as stored."""
        self._check(exchange, routing_key, properties)
        deadline = time.monotonic() + self._timeout
        ticket = self._tickets  # the order of the calls is the order on the wire
        self._tickets = ticket + 1
        self._inflight += 1
        self._idle.clear()
        try:
            window = self._window
            try:
                if ticket != self._next_write:
                    await self._turn(ticket, deadline, properties)
                await window.acquire()
            except BaseException:
                self._abandon(ticket)
                raise
            try:
                await self._send(
                    exchange, routing_key, body, properties, stream, deadline, mandatory, ticket
                )
            finally:
                window.release()
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    def _check(self, exchange: str, routing_key: str, properties: spec.Basic.Properties) -> None:
        """Refuse a publish that cannot travel (`limits`)."""
        check_publish(
            properties.message_id,
            exchange,
            routing_key,
            properties.headers,
            (
                properties.message_id,
                properties.content_type,
                properties.correlation_id,
                properties.reply_to,
                properties.app_id,
                properties.content_encoding,
                properties.message_type,
                properties.expiration,
                properties.user_id,
            ),
            self.frame_max,
            properties.marshal,
        )

    async def send_many(
        self, publishes: list[tuple[str, str, bytes, spec.Basic.Properties]]
    ) -> list[BaseException | None]:
        """Publish each (stream, routing key, body, properties) to its stream, in the given
        order, and wait for every confirm; -> per publish None (stored) or its error.

        The same guarantees as `send` (one ticket each, so the order on the wire is the
        order of the calls; recovery; the window), at a fraction of the cost: the
        window's free slots are filled in one write of many publishes
        (`frames.write_batch`), and their confirms are collected in order by this one
        coroutine instead of a task and a timer each. The publish timeout counts for each
        publish from its write, so a batch of any size fails only when it stops moving."""
        outcomes: list[BaseException | None] = [None] * len(publishes)
        entries: list[_Pending] = []
        places: list[int] = []
        mandatory = self._mandatory
        for place, (stream, routing_key, body, properties) in enumerate(publishes):
            try:
                self._check(stream, routing_key, properties)
            except PublishError as exc:
                outcomes[place] = exc
                continue
            entries.append(_Pending(stream, routing_key, body, properties, mandatory, stream, None))
            places.append(place)
        total = len(entries)
        if not total:
            return outcomes
        deadline = time.monotonic() + self._timeout
        first = self._tickets
        self._tickets = first + total
        self._inflight += total
        self._idle.clear()
        window = self._window
        attempts: list[Awaitable[Any]] = []
        deadlines: list[float] = []
        written = done = 0  # entries written (they hold window slots), entries finished

        async def finish(index: int) -> None:
            try:
                await self._confirmed(entries[index], attempts[index], deadlines[index])
            except PublishError as exc:
                outcomes[places[index]] = exc

        try:
            try:
                if first != self._next_write:
                    await self._turn(first, deadline, entries[0].properties)
                while written < total:
                    if window.locked() and done < written:
                        # the window is full and part of it is ours: the oldest confirm
                        await finish(done)
                        window.release()
                        done += 1
                        continue
                    await window.acquire()  # suspends only when others hold the window
                    take, size = 1, len(entries[written].body)
                    while written + take < total and size < WRITE_BYTES and not window.locked():
                        await window.acquire()  # free: no suspension
                        size += len(entries[written + take].body)
                        take += 1
                    deadline = time.monotonic() + self._timeout
                    try:
                        attempts += await self._write_batch(
                            entries[written : written + take], first + written, deadline
                        )
                    except BaseException:
                        for _ in range(take):
                            window.release()
                        raise
                    deadlines += [deadline] * take
                    written += take
            except BaseException:
                for ticket in range(first + written, first + total):
                    self._abandon(ticket)
                raise
            while done < total:
                await finish(done)
                window.release()
                done += 1
        finally:
            for _ in range(written - done):  # given up (cancelled) while in flight
                window.release()
            for ticket in range(first, first + written):
                entry = self._pending.pop(ticket, None)
                if entry is not None:
                    _forget(entry)
            self._inflight -= total
            if not self._inflight:
                self._idle.set()
        return outcomes

    async def _write_batch(
        self, entries: list[_Pending], ticket: int, deadline: float
    ) -> list[Awaitable[Any]]:
        """Holding the turn of `ticket`, the first of `entries`' tickets: write them in one
        go, pass the turn on past them; -> their writes, to await. A write lost with its
        channel is the recovery's to repeat, as for `send`."""
        streams = {entry.stream for entry in entries if entry.stream is not None}
        channel = await self._ready_for(streams, deadline, entries[0].properties)
        pending = self._pending
        for offset, entry in enumerate(entries):
            entry.channel = channel
            pending[ticket + offset] = entry
        try:
            attempts = await write_batch(channel, entries)
        except LOST as exc:
            # not written (the channel closed first): the recovery writes them, in order
            self._log.debug("publish.batch_lost", error=repr(exc), count=len(entries))
            lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            lost.set_exception(exc)
            lost.exception()  # retrieved: each entry's wait sees it
            attempts = [lost] * len(entries)
        except BaseException:  # cancelled before anything was written
            for offset in range(len(entries)):
                del pending[ticket + offset]
            raise
        for _ in entries:
            self._advance()
        return attempts

    async def _ready_for(
        self, streams: set[str], deadline: float, properties: spec.Basic.Properties
    ) -> AbstractChannel:
        """The live channel, with every one of `streams` declared on it."""
        while True:
            channel = await self._ready(None, deadline, properties)
            missing = sorted(streams - self._declared)
            if not missing:
                return channel
            for stream in missing:
                await self._ready(stream, deadline, properties)

    async def _send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        stream: str | None,
        deadline: float,
        mandatory: bool,
        ticket: int,
    ) -> None:
        """Holding the turn of `ticket`: write, pass the turn on, await the confirm.

        Written as a batch of one (`frames.write_batch`): what stays alive while the
        confirm is awaited is the entry and its confirmation future, not aiormq's
        `basic_publish` coroutine with its frames, timer and lock context (about a third
        of the objects a publish in flight holds, which a busy service's concurrent
        publishes keep long enough for the collector's oldest generation)."""
        entry = _Pending(exchange, routing_key, body, properties, mandatory, stream, None)
        try:
            [attempt] = await self._write_batch([entry], ticket, deadline)
        except BaseException:
            self._abandon(ticket)
            raise
        try:
            await self._confirmed(entry, attempt, deadline)
        finally:
            self._pending.pop(ticket, None)
            _forget(entry)

    async def _confirmed(self, entry: _Pending, attempt: Awaitable[Any], deadline: float) -> None:
        """Wait for the broker's answer to `entry`, written as `attempt`; a write lost with
        its channel is waited for again as the recovery writes it anew. Raises
        `PublishError` (or `UnroutableError`) when it was not stored."""
        exchange, routing_key, properties = entry.exchange, entry.routing_key, entry.properties
        while True:
            try:
                if type(attempt) is asyncio.Future and attempt.done():  # a batch's, mostly
                    confirm = attempt.result()
                else:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        confirm = await attempt
            except aiormq.exceptions.PublishError:
                raise UnroutableError(
                    _unroutable(properties, exchange, routing_key, entry.stream)
                ) from None
            except aiormq.exceptions.DeliveryError:
                raise self._nacked(entry, exchange, routing_key) from None
            except aiormq.exceptions.ChannelAccessRefused as exc:
                raise PublishError(
                    f"RabbitMQ refused the publish to {_where(exchange, routing_key)}: {exc}"
                ) from None
            except TimeoutError:
                raise self._timed_out(properties, exchange, routing_key) from None
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                attempt = await self._written_again(entry, attempt, deadline)
                continue
            except LOST as exc:
                self._log.debug("publish.resend", error=repr(exc), event_id=properties.message_id)
                attempt = await self._written_again(entry, attempt, deadline)
                continue
            if isinstance(confirm, spec.Basic.Nack):
                raise self._nacked(entry, exchange, routing_key)
            return

    def _nacked(self, entry: _Pending, exchange: str, routing_key: str) -> PublishError:
        """The broker nacked `entry`: it was not stored, and the caller is told so. The
        channel is replaced (the recovery writes what it still has pending again, in
        order): a RabbitMQ 3.10 channel that published to a quorum queue while its leader
        was being elected may go on nacking every later publish to that queue, and a fresh
        channel does not."""
        if not self._closed and entry.channel is self._channel:
            self._log.warning(
                "publish.nacked", event_id=entry.properties.message_id, action="new channel"
            )
            self._recover(entry.channel)
        return PublishError(
            f"RabbitMQ did not store event {entry.properties.message_id} "
            f"({_where(exchange, routing_key)}): the broker nacked it"
        )

    # --- turns: the wire order is the order of the calls ------------------------------------

    async def _turn(self, ticket: int, deadline: float, properties: spec.Basic.Properties) -> None:
        """Wait until every earlier publish was written (or given up)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns[ticket] = waiter
        try:
            await asyncio.wait_for(waiter, deadline - time.monotonic())
        except TimeoutError:
            raise self._timed_out(properties, "", "") from None

    def _advance(self) -> None:
        """The publish holding the turn was written (or given up): the next one's turn."""
        n = self._next_write + 1
        skipped = self._skipped
        while n in skipped:
            skipped.discard(n)
            n += 1
        self._next_write = n
        waiter = self._turns.pop(n, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _abandon(self, ticket: int) -> None:
        """A publish gives up before it was written (error, timeout, cancellation)."""
        if ticket == self._next_write:
            self._advance()
        elif ticket > self._next_write:
            self._skipped.add(ticket)
            waiter = self._turns.pop(ticket, None)
            if waiter is not None and not waiter.done():
                waiter.cancel()

    async def _ready(
        self, stream: str | None, deadline: float, properties: spec.Basic.Properties
    ) -> AbstractChannel:
        """The live channel, once no recovery runs and `stream` is declared on it."""
        while True:
            recovery = self._recovery
            if recovery is not None:
                await self._wait(recovery, deadline, properties)
                continue
            channel = self._channel
            if channel is None or channel.is_closed:
                self._recover(channel)
                continue
            if stream is not None and stream not in self._declared:
                try:
                    await self._declare(channel, stream)
                except LOST:
                    self._recover(channel)
                continue  # suspended: look again
            return channel

    async def _written_again(
        self, entry: _Pending, failed: Awaitable[Any], deadline: float
    ) -> Awaitable[Any]:
        """The write `failed` of `entry` was lost with its channel: the recovery writes it
        again on the next channel, in order; -> that write."""
        while True:
            resend = entry.resend
            if resend is not None and resend is not failed:
                return resend
            recovery = self._recovery
            if recovery is not None:
                await self._wait(recovery, deadline, entry.properties)
                continue
            current = self._channel
            if current is None or current is entry.channel or current.is_closed:
                self._recover(entry.channel)
                continue
            # a newer channel is live, yet this was not written again: cannot happen
            # (a recovery writes every pending publish again before the channel is used);
            # write it now rather than never
            entry.channel = current
            entry.resend = asyncio.ensure_future(entry.write(current))
            entry.resend.add_done_callback(_retrieve)

    def _recover(self, lost: AbstractChannel | None) -> None:
        """Start the recovery of the lost channel, unless one runs or already happened."""
        if self._closed:
            raise PublishError(f"the publisher to {self._link.target.redacted} is closed")
        if self._recovery is not None:
            return
        current = self._channel
        if current is not None and current is not lost and not current.is_closed:
            return
        self._channel = None
        self._recovery = asyncio.get_running_loop().create_future()
        self._recoverer = asyncio.create_task(
            self._recovering(lost), name="eventbus-rabbitmq-publisher-recovery"
        )

    async def _recovering(self, lost: AbstractChannel | None) -> None:
        pause = 0.05
        try:
            if lost is not None and not lost.is_closed:  # failed, yet open: do not leak it
                with contextlib.suppress(*LOST):
                    await asyncio.wait_for(lost.close(), 5)
            while not self._closed:
                try:
                    connection = await self._link.connection()
                    opened = await connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    channel: AbstractChannel = await opened.get_underlay_channel()
                    if self._on_channel is not None:
                        await self._on_channel(channel)
                    self._declared = set()
                    streams = {e.stream for e in self._pending.values() if e.stream is not None}
                    for stream in sorted(streams):
                        await declare_stream(channel, stream)
                        self._declared.add(stream)
                except Exception as exc:  # LOST, or a declaration refused: try again
                    self._log.debug("publish.reopen_failed", error=repr(exc), retry_in=pause)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
                self.frame_max = _frame_max(channel)
                again = 0
                # no suspension from here on: everything pending goes first, in order
                for entry in self._pending.values():
                    if entry.channel is channel:
                        continue
                    entry.channel = channel
                    entry.resend = asyncio.ensure_future(entry.write(channel))
                    entry.resend.add_done_callback(_retrieve)
                    again += 1
                self._channel = channel
                if again:
                    self._log.info("publish.resent", count=again)
                return
        finally:
            recovery, self._recovery = self._recovery, None
            if recovery is not None and not recovery.done():
                recovery.set_result(None)

    async def _wait(
        self, recovery: asyncio.Future[None], deadline: float, properties: spec.Basic.Properties
    ) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out(properties, "", "")
        try:
            await asyncio.wait_for(asyncio.shield(recovery), remaining)
        except TimeoutError:
            raise self._timed_out(properties, "", "") from None
        if self._closed:
            raise PublishError(f"the publisher to {self._link.target.redacted} is closed")

    def _timed_out(
        self, properties: spec.Basic.Properties, exchange: str, routing_key: str
    ) -> PublishError:
        where = f" to {_where(exchange, routing_key)}" if exchange or routing_key else ""
        return PublishError(
            f"event {properties.message_id}{where} was not confirmed within {self._timeout}s "
            f"(EVENTBUS_RABBITMQ_PUBLISH_TIMEOUT): RabbitMQ at {self._link.target.redacted} "
            "is unreachable"
        )

    async def _declare(self, channel: AbstractChannel, stream: str) -> None:
        async with self._declaring:  # one declaration; concurrent publishes wait in order
            if stream not in self._declared and channel is self._channel:
                await declare_stream(channel, stream)
                self._declared.add(stream)

    async def flush(self, timeout: float) -> None:
        """Wait for publishes in flight (graceful close)."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            self._log.warning("publish.flush_timeout", inflight=self._inflight)

    async def close(self) -> None:
        self._closed = True
        recoverer = self._recoverer
        if recoverer is not None and not recoverer.done():
            recoverer.cancel()
            await asyncio.gather(recoverer, return_exceptions=True)
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*LOST):
                await channel.close()


def _frame_max(channel: AbstractChannel) -> int:
    tune = getattr(getattr(channel, "connection", None), "connection_tune", None)
    value = getattr(tune, "frame_max", None)
    return int(value) if value else DEFAULT_FRAME_MAX


def _forget(entry: _Pending) -> None:
    """`entry` is finished: stop a repeated write nobody awaits any more, and drop what the
    channel keeps to match a return with it (`frames`)."""
    resend = entry.resend
    if resend is not None and not resend.done():
        resend.cancel()
    unmatch(entry)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A write made again by a recovery whose publisher stopped waiting: its outcome is
    nobody's business any more (and must not be logged as never retrieved)."""
    if not future.cancelled():
        future.exception()


def _unroutable(
    properties: spec.Basic.Properties, exchange: str, routing_key: str, stream: str | None
) -> str:
    event = f"event {properties.message_id}"
    if stream is not None:
        return (
            f"{event} ({routing_key}) published to stream {stream!r} reached no queue: no "
            "group subscribes to this type yet (publishing is mandatory, so it was not stored)"
        )
    if not exchange:
        return (
            f"{event} sent to queue {routing_key!r} was returned: that queue does not exist "
            "(deleted?), so the copy was not stored"
        )
    return f"{event} sent to exchange {exchange!r} was returned: it routed it to no queue"


def _where(exchange: str, routing_key: str) -> str:
    return f"exchange {exchange!r}" if exchange else f"queue {routing_key!r}"
