"""Confirmed publishing: one channel in confirm mode, pipelined within a bounded window.

Every publish is persistent and `mandatory`; it returns once the broker confirmed it.
Many publishes are in flight at once (up to `confirm_window`), each awaiting its own
confirm, so throughput is not one round trip per message.

aiormq correlates a `basic.return` with its publish by `message_id` (the event id) and
the broker sends the return before the confirm, so an unroutable event fails its own
publish with `UnroutableError` and nothing else.

Recovery: a publish whose channel or connection died before the confirm arrived is sent
again on a new channel once the link is back (a duplicate is possible, a loss is not);
the caller waits up to `publish_timeout` for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiormq
from aiormq.abc import AbstractChannel
from pamqp import commands as spec

from eventbus.errors import PublishError, UnroutableError
from eventbus.log import get_logger

from .link import LOST, Link
from .topology import declare_stream


class Publisher:
    def __init__(self, link: Link, window: int, timeout: float, *, mandatory: bool = True) -> None:
        self._link = link
        self._mandatory = mandatory
        self._timeout = timeout
        self._window = asyncio.Semaphore(window)
        self._channel: AbstractChannel | None = None
        self._opening = asyncio.Lock()
        self._declaring = asyncio.Lock()
        #: streams whose exchange was declared on the current channel
        self._declared: set[str] = set()
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
        deadline = time.monotonic() + self._timeout
        self._inflight += 1
        self._idle.clear()
        try:
            async with self._window:
                await self._send(
                    exchange, routing_key, body, properties, stream, deadline, mandatory
                )
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        stream: str | None,
        deadline: float,
        mandatory: bool,
    ) -> None:
        pause = 0.05
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PublishError(
                    f"event {properties.message_id} to {_where(exchange, routing_key)} was not "
                    f"confirmed within {self._timeout}s (EVENTBUS_RABBITMQ_PUBLISH_TIMEOUT): "
                    f"RabbitMQ at {self._link.target.redacted} is unreachable"
                )
            try:
                async with asyncio.timeout(remaining):
                    channel = await self._open()
                    if stream is not None and stream not in self._declared:
                        await self._declare(channel, stream)
                    confirm = await channel.basic_publish(
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=properties,
                        mandatory=mandatory,
                    )
            except aiormq.exceptions.PublishError:
                raise UnroutableError(
                    f"event {properties.message_id} ({routing_key}) published to "
                    f"{_where(exchange, routing_key)} reached no queue: no group subscribes "
                    "to this type yet (publishing is mandatory, so it was not stored)"
                ) from None
            except aiormq.exceptions.ChannelAccessRefused as exc:
                raise PublishError(
                    f"RabbitMQ refused the publish to {_where(exchange, routing_key)}: {exc}"
                ) from None
            except TimeoutError:
                continue  # the deadline check above raises
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # the channel was torn down under us: send again
                await self._lost(pause)
                pause = min(pause * 2, 1.0)
                continue
            except LOST as exc:
                self._log.debug("publish.resend", error=repr(exc), event_id=properties.message_id)
                await self._lost(pause)
                pause = min(pause * 2, 1.0)
                continue
            if isinstance(confirm, spec.Basic.Nack):
                raise PublishError(
                    f"RabbitMQ did not store event {properties.message_id} "
                    f"({_where(exchange, routing_key)}): the broker nacked it"
                )
            return

    async def prepare(self, streams: set[str]) -> None:
        """Open the channel and declare the streams' exchanges before a batch, so the
        batch's publishes reach the wire in the order they were issued."""
        channel = await self._open()
        for stream in streams - self._declared:
            await self._declare(channel, stream)

    async def _declare(self, channel: AbstractChannel, stream: str) -> None:
        async with self._declaring:  # one declaration; concurrent publishes wait in order
            if stream not in self._declared:
                await declare_stream(channel, stream)
                self._declared.add(stream)

    async def _lost(self, pause: float) -> None:
        channel = self._channel
        if channel is not None and channel.is_closed:
            self._channel = None
        await asyncio.sleep(pause)
        await self._link.wait_up()

    async def _open(self) -> AbstractChannel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._opening:
            channel = self._channel
            if channel is not None and not channel.is_closed:
                return channel
            connection = await self._link.connection()
            opened = await connection.channel(publisher_confirms=True, on_return_raises=True)
            raw: AbstractChannel = await opened.get_underlay_channel()
            self._declared = set()
            self._channel = raw
            return raw

    async def flush(self, timeout: float) -> None:
        """Wait for publishes in flight (graceful close)."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            self._log.warning("publish.flush_timeout", inflight=self._inflight)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*LOST):
                await channel.close()


def _where(exchange: str, routing_key: str) -> str:
    return f"exchange {exchange!r}" if exchange else f"queue {routing_key!r}"
