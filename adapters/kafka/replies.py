"""Request/reply on Kafka: a reply topic per requesting bus.

Requester: on its first request a bus creates its reply topic
`<reply_topic_prefix>.replies.<host>-<pid>-<random>` (one partition; `retention.ms` and
`segment.ms` = `reply_retention_ms`, so old replies go away) and starts a consumer of its
own on it: assigned, not subscribed (no group membership, no rebalance, no commits), at
the partition's end offset read explicitly beforehand. So it reads every reply produced
after `reply_channel` returned, and the first request goes out only after that. Requests
are produced as any event, their `ce_replyto` header naming the topic. On close the
consumer stops and the topic is deleted, if this bus created it. The random part keeps
two processes apart even where process ids repeat (containers are all pid 1).

Responder: a reply is produced to the topic its request names, by a producer of its own
made for at-most-once delivery (acks=1, no idempotence, no linger, a short
`message.timeout.ms`): a reply to a topic that is gone fails within seconds instead of
holding a responder or the event producer's queue. Only topics under the responder's own
`reply_topic_prefix` are replied to, so a producer cannot make a responder write into a
stream by naming it in `replyto`.

A requester that dies without closing leaves its reply topic behind (empty once the
retention has passed): `<prefix>.replies.*` topics that no consumer reads can be deleted.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import threading
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from eventbus.toolkit import (
    ConfigurationError,
    PublishError,
    ReceiveReply,
    Reply,
    from_kafka_headers,
    get_logger,
)
from eventbus.toolkit import Message as EventMessage

from .records import headers_of
from .settings import ClientConfigs, config_error

if TYPE_CHECKING:
    from .broker import KafkaBroker

_log = get_logger()
#: the reply producer's overrides of the producer config: at most once, no waiting
REPLY_PRODUCER = {
    "acks": "1",
    "enable.idempotence": False,
    "linger.ms": 0,
    "message.timeout.ms": 5000,
    "statistics.interval.ms": 0,
}
_LEGAL = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_BATCH = 100
_POLL = 0.2


def reply_topic(prefix: str) -> str:
    """A fresh reply topic name: `<prefix>.replies.<host>-<pid>-<random>`."""
    host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-")[:40] or "host"
    return f"{prefix}.replies.{host}-{os.getpid()}-{secrets.token_hex(3)}"


def is_reply_topic(prefix: str, address: str) -> bool:
    return address.startswith(f"{prefix}.replies.") and bool(_LEGAL.match(address))


class KafkaReplyChannel:
    """A requesting bus's reply topic and the consumer reading it."""

    def __init__(self, broker: KafkaBroker, receive: ReceiveReply) -> None:
        self._broker = broker
        self._configs: ClientConfigs = broker.configs
        self._receive = receive
        self.address = reply_topic(broker.settings.reply_topic_prefix)
        self._created = False
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"KafkaReplyChannel({self.address!r})"

    async def start(self) -> None:
        """Create the topic, assign the consumer at its end: ready for the first reply."""
        self._loop = asyncio.get_running_loop()
        settings = self._broker.settings
        retention = str(settings.reply_retention_ms)
        config = {"retention.ms": retention, "segment.ms": retention, "cleanup.policy": "delete"}
        topics = self._broker.topics
        await asyncio.to_thread(topics.ensure, {self.address: 1}, config)
        self._created = self.address in topics.created
        try:
            await asyncio.to_thread(self._assign)
        except BaseException:
            await self.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"eventbus-kafka-{self.address}", daemon=True
        )
        self._thread.start()

    def _assign(self) -> None:
        config = self._configs.consumer(self.address, {"enable.partition.eof": False})
        config["error_cb"] = self._client_error
        try:
            consumer = self._consumer = Consumer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise config_error(self._configs, exc, f"reply consumer of {self.address!r}") from None
        partition = TopicPartition(self.address, 0)
        timeout = self._configs.settings.admin_timeout
        try:
            _low, high = consumer.get_watermark_offsets(partition, timeout=timeout)
        except KafkaException as exc:
            raise ConnectionError(
                f"cannot read the end of reply topic {self.address!r} within {timeout}s: "
                f"{self._configs.scrub(str(exc))}"
            ) from None
        # an explicit offset: nothing produced from now on is skipped (a logical `end`
        # would be resolved later, after the first replies perhaps)
        consumer.assign([TopicPartition(self.address, 0, high)])

    def _client_error(self, error: KafkaError) -> None:
        _log.warning(
            "kafka.client_error", client="reply consumer", error=self._configs.scrub(str(error))
        )

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stop.is_set():
            try:
                messages = consumer.consume(_BATCH, _POLL)
            except Exception as exc:  # keep reading: replies are at most once anyway
                _log.warning("kafka.reply_consume_failed", topic=self.address, error=repr(exc))
                self._stop.wait(_POLL)
                continue
            replies = [r for r in map(_reply_of, messages) if r is not None]
            if replies and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._hand_over, replies)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return

    def _hand_over(self, replies: list[Reply]) -> None:
        for reply in replies:
            self._receive(reply)

    async def publish(self, message: EventMessage) -> None:
        await self._broker.publish(message)

    async def close(self) -> None:
        """Stop reading, close the consumer, delete the topic if this bus created it."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await asyncio.to_thread(consumer.close)
        if self._created:
            self._created = False
            try:
                await asyncio.to_thread(self._broker.topics.delete, [self.address])
            except (KafkaException, ConfigurationError, ConnectionError) as exc:
                _log.warning("kafka.reply_topic_left", topic=self.address, error=repr(exc))


def _reply_of(message: Message) -> Reply | None:
    """A consumed record as a reply (None for an error event of the client); whatever
    cannot be decoded becomes a reply without attributes (dropped, counted unmatched)."""
    error = message.error()
    if error is not None:
        if error.code() != KafkaError._PARTITION_EOF:
            _log.debug("kafka.reply_error", error=str(error))
        return None
    try:
        attributes, _attempt = from_kafka_headers(headers_of(message), message.key())
        return Reply(attributes, message.value() or b"")
    except Exception as exc:
        _log.warning("reply.undecodable", error=repr(exc)[:300])
        return Reply({}, b"")


def refuse(prefix: str, address: str) -> PublishError:
    return PublishError(
        f"reply address {address[:100]!r} is not a reply topic ({prefix}.replies.*): "
        "not replied to (requesters and responders must share EVENTBUS_KAFKA_REPLY_TOPIC_PREFIX)"
    )
