"""`kafka://host:port[,host:port]`: the Kafka broker of eventbus, on confluent-kafka.

Stream = topic, group = consumer group, key = record key (partition), event type = the
`ce_type` header (CloudEvents binary mode). Publishing awaits the delivery report of an
idempotent `acks=all` producer. Delayed retries go to `<stream>.<group>.retry.<n>`, dead
letters to `<stream>.<group>.dlq`, replayed dead letters to `<stream>.<group>.replay`.

Retry and dead-letter copies have a producer of their own, started with the first
subscription: the same durable config, without `linger.ms`. A subscription settles its
records in order, so a copy holds everything behind it until it is stored; lingering for a
batch would cost each failed or bad record the whole linger (5 ms: a flood of bad input
was dead-lettered at ~170 records/s, ~2,400/s without it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from eventbus.toolkit import (
    Capabilities,
    ConfigurationError,
    Consumer,
    ConsumerState,
    DeadLetter,
    Deliver,
    LinkState,
    Message,
    ReceiveReply,
    Select,
    Settings,
    SubscriptionSpec,
    get_logger,
    subscription_options,
    to_kafka_headers,
)

from .consumer import KafkaConsumer
from .dlq import (
    DeadLetterReader,
    DeadLetterWriter,
    Kept,
    dead_letter_of,
    kept_record,
    replay_record,
)
from .link import check_cluster
from .names import dlq_topic, replay_topic, retry_topic
from .producer import COPY_PRODUCER, AsyncProducer, Record, record_of
from .replies import REPLY_PRODUCER, KafkaReplyChannel, is_reply_topic, refuse
from .settings import SubscriptionOptions, client_configs
from .topics import Topics

_log = get_logger()
#: what a retry or dead-letter topic takes beyond its stream's largest record: room for
#: the headers eventbus adds (the dead-letter headers are shortened to fit, if need be)
SIDE_TOPIC_HEADROOM = 64 * 1024
#: a broker's default `message.max.bytes`, if a topic's cannot be read
BROKER_DEFAULT_RECORD_LIMIT = 1048588


class KafkaBroker:
    """The `Broker` of `kafka://`."""

    capabilities = Capabilities(
        shared_across_processes=True,
        delayed_retry=True,
        request_reply=True,
        replays_history_to_new_groups=True,  # a new group starts at the earliest offset
        unroutable_is_error=False,
        records_offsets=True,  # x-original-partition / x-original-offset
        marks_redeliveries=False,  # a record fetched again looks like the first fetch
        transactions=True,  # exactly_once=True: transactional consume-transform-produce
        system="kafka",
    )

    def __init__(self, settings: Settings) -> None:
        self.configs = client_configs(settings)  # validates the URL and the options
        self.settings = self.configs.settings
        self.topics = Topics(self.configs)
        self.producer = AsyncProducer(self.configs)
        self._consumers: list[KafkaConsumer] = []
        self._topic_locks: dict[str, asyncio.Lock] = {}
        #: stream -> publishes waiting for its topic; while any waits, a later publish of
        #: that stream queues behind them (`_publish_in_order`)
        self._topic_waiters: dict[str, int] = {}
        #: topic -> the largest record it and the producer take (exactly-once staging)
        self._record_limits: dict[str, int] = {}
        #: the responder's reply producer (`send_reply`), started on the first reply
        self._reply_producer: AsyncProducer | None = None
        #: the producer of retry and dead-letter copies, started with the first subscription
        self._copy_producer: AsyncProducer | None = None

    def __repr__(self) -> str:
        return f"KafkaBroker({self.configs.target.redacted!r})"

    async def start(self) -> None:
        await asyncio.to_thread(self._check_cluster)
        self.producer.start()

    def _check_cluster(self) -> None:
        check_cluster(self.configs, self.settings.connect_timeout)

    def state(self) -> LinkState:
        """The producer's link to the cluster, as librdkafka last reported it (no I/O):
        connected while a cluster node is (statistics every `statistics_interval_ms`);
        down at once when librdkafka reports every broker down or the last one lost,
        `detail` being its last connection error (scrubbed)."""
        return self.producer.link.state()

    async def close(self) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.close()
        replies, self._reply_producer = self._reply_producer, None
        if replies is not None:
            await replies.close(timeout=5.0)
        copies, self._copy_producer = self._copy_producer, None
        if copies is not None:
            await copies.close()
        await self.producer.close()

    # --- publishing ----------------------------------------------------------------------

    async def _ensure(self, wanted: dict[str, int], config: dict[str, str] | None = None) -> None:
        known = self.topics.known
        missing = {name: n for name, n in wanted.items() if name not in known}
        if not missing:
            return
        lock = self._topic_locks.setdefault(",".join(sorted(missing)), asyncio.Lock())
        async with lock:
            await asyncio.to_thread(self.topics.ensure, missing, config)

    async def _ensure_side_topics(self, stream: str, side: dict[str, int], dlq: str) -> int:
        """Make the retry/replay/dead-letter topics of a group (name -> partitions) take
        any record of the stream plus the headers eventbus adds: created, or raised, to
        the stream's `max.message.bytes` + headroom. -> the largest dead-letter copy that
        can be stored (the dead-letter topic's limit, at most the producer's)."""
        try:
            limits = await asyncio.to_thread(self.topics.record_limits, [stream, *side])
        except ConnectionError as exc:  # e.g. no DescribeConfigs permission: assume defaults
            _log.warning("kafka.topic_limits_unknown", stream=stream, error=str(exc))
            needed = BROKER_DEFAULT_RECORD_LIMIT + SIDE_TOPIC_HEADROOM
            await self._ensure(side, {"max.message.bytes": str(needed)})
            return min(BROKER_DEFAULT_RECORD_LIMIT, self.configs.producer_max_bytes)
        needed = (limits.get(stream) or BROKER_DEFAULT_RECORD_LIMIT) + SIDE_TOPIC_HEADROOM
        missing = {name: n for name, n in side.items() if limits.get(name) is None}
        if missing:
            await self._ensure(missing, {"max.message.bytes": str(needed)})
        low = [name for name in side if (limits.get(name) or needed) < needed]
        if low and self.settings.create_topics:
            await asyncio.to_thread(self.topics.raise_record_limit, low, needed)
        elif low:
            _log.warning(
                "kafka.side_topic_too_small",
                topics=low,
                needed=needed,
                hint=f"records near the limit of {stream!r} cannot be retried or "
                "dead-lettered whole: raise max.message.bytes of these topics",
            )
        dlq_limit = limits.get(dlq)
        if dlq_limit is None or (dlq_limit < needed and self.settings.create_topics):
            dlq_limit = needed
        return min(dlq_limit, self.configs.producer_max_bytes)

    async def _record_limit(self, stream: str) -> int:
        """Make `stream`'s topic exist; -> the largest record it and the producer take
        (read once per topic: exactly-once deliveries check what they stage with it)."""
        limit = self._record_limits.get(stream)
        if limit is not None:
            return limit
        if stream not in self.topics.known:
            await self._ensure({stream: self.settings.partitions})
        try:
            found = (await asyncio.to_thread(self.topics.record_limits, [stream])).get(stream)
        except ConnectionError as exc:  # e.g. no DescribeConfigs permission: the default
            _log.warning("kafka.topic_limits_unknown", stream=stream, error=str(exc))
            found = None
        limit = min(found or BROKER_DEFAULT_RECORD_LIMIT, self.configs.producer_max_bytes)
        self._record_limits[stream] = limit
        return limit

    def publish(self, message: Message) -> Coroutine[Any, Any, None]:
        """Not a coroutine function: it returns the coroutine that publishes, so a
        publish in flight is one coroutine fewer for the collector to carry (see
        `AsyncProducer.send_message`)."""
        stream = message.stream
        if stream in self.topics.known and stream not in self._topic_waiters:
            return self.producer.send_message(message)
        return self._publish_new(message)

    async def _publish_new(self, message: Message) -> None:
        """`publish` to a topic not known yet (or that publishes are waiting for)."""
        await (await self._publish_in_order([message.stream], [record_of(message)]))

    async def publish_many(self, messages: list[Message]) -> None:
        streams = sorted({m.stream for m in messages})
        waiters = self._topic_waiters
        if all(s in self.topics.known and s not in waiters for s in streams):
            await self.producer.send_messages(messages)
        else:
            records = [record_of(m) for m in messages]
            await (await self._publish_in_order(streams, records))

    async def _publish_in_order(
        self, streams: list[str], records: list[Record]
    ) -> asyncio.Future[None]:
        """Make the topics of `streams` exist, then hand `records` to the producer, in
        the order the publishes were called; -> the future of their reports. The topics
        become known in a worker thread a moment before the publishes that waited for
        them wake up: a publish called in that moment queues behind them (the topic's
        lock is fair) instead of overtaking them, which would break per-key order."""
        waiters = self._topic_waiters
        for stream in streams:
            waiters[stream] = waiters.get(stream, 0) + 1
        try:
            async with contextlib.AsyncExitStack() as locks:
                for stream in streams:  # sorted: no two publishes wait for each other
                    await locks.enter_async_context(
                        self._topic_locks.setdefault(stream, asyncio.Lock())
                    )
                missing = {s: self.settings.partitions for s in streams}
                missing = {s: n for s, n in missing.items() if s not in self.topics.known}
                if missing:
                    await asyncio.to_thread(self.topics.ensure, missing, None)
                return await self.producer.submit_many(records)
        finally:
            for stream in streams:
                waiters[stream] -= 1
                if not waiters[stream]:
                    del waiters[stream]

    # --- request/reply: a reply topic per requesting bus (`replies`) ----------------------

    async def reply_channel(self, receive: ReceiveReply) -> KafkaReplyChannel:
        channel = KafkaReplyChannel(self, receive)
        await channel.start()
        return channel

    async def send_reply(self, address: str, message: Message) -> None:
        prefix = self.settings.reply_topic_prefix
        if not is_reply_topic(prefix, address):
            raise refuse(prefix, address)
        producer = self._reply_producer
        if producer is None:
            producer = self._reply_producer = AsyncProducer(self.configs, REPLY_PRODUCER)
            producer.start()
        headers = to_kafka_headers(message.attributes)
        await producer.send(Record(address, message.body, None, headers, message.id))  # type: ignore[arg-type]

    # --- consuming -----------------------------------------------------------------------

    async def subscribe(self, spec: SubscriptionSpec, deliver: Deliver) -> Consumer:
        options = subscription_options(SubscriptionOptions, spec, "Kafka")
        if options.transactional_id is not None and not spec.exactly_once:
            raise ConfigurationError(
                f"subscription {spec.stream}/{spec.group}: transactional_id is for "
                "exactly-once subscriptions; add exactly_once=True or drop it"
            )
        settings = self.settings
        partitions = options.partitions or settings.partitions
        stream, group = spec.stream, spec.group
        retries = [retry_topic(stream, group, n) for n in range(len(spec.retry_tiers))]
        replay, dlq = replay_topic(stream, group), dlq_topic(stream, group)
        await self._ensure({stream: partitions})
        side = {replay: settings.dlq_partitions, dlq: settings.dlq_partitions}
        side.update({name: partitions for name in retries})
        dead_letter_limit = await self._ensure_side_topics(stream, side, dlq)
        consumer = KafkaConsumer(
            configs=self.configs,
            producer=self._copies(),
            spec=spec,
            deliver=deliver,
            topics=[stream, *retries, replay],
            delayed_topics={*retries, replay},
            partition_buffer=options.partition_buffer or settings.partition_buffer,
            partition_buffer_bytes=(
                options.partition_buffer_bytes or settings.partition_buffer_bytes
            ),
            dead_letter_limit=dead_letter_limit,
            config=options.config,
            record_limit=self._record_limit,
            transactional_id=options.transactional_id,
        )
        await consumer.start(settings.assignment_timeout)
        self._consumers.append(consumer)
        return KafkaSubscription(self, consumer)

    def _copies(self) -> AsyncProducer:
        """The producer of retry and dead-letter copies (started on first use)."""
        copies = self._copy_producer
        if copies is None:
            copies = AsyncProducer(self.configs, COPY_PRODUCER)
            copies.start()
            self._copy_producer = copies
        return copies

    def _forget(self, consumer: KafkaConsumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)

    # --- dead letters --------------------------------------------------------------------

    def _reader(self, stream: str, group: str) -> DeadLetterReader:
        return DeadLetterReader(self.configs, stream, group)

    async def dead_letters(self, stream: str, group: str) -> AsyncIterator[DeadLetter]:
        """Streamed: each letter is yielded as it is read, never the whole topic at once."""
        reader = self._reader(stream, group)
        try:
            if not await asyncio.to_thread(reader.open):
                return
            while (batch := await asyncio.to_thread(reader.next_batch)) is not None:
                for message in batch:
                    yield dead_letter_of(stream, group, message)
        finally:
            await asyncio.to_thread(reader.close)

    async def replay_dead_letters(
        self, stream: str, group: str, select: Select | None = None
    ) -> int:
        """Batch by batch: each batch is stored on the replay topic, then the replay group
        moves past it (a failure midway leaves the rest listed, none lost). With `select`,
        each batch is settled in one transaction (`dlq.DeadLetterWriter`)."""
        if select is not None:
            return await self._rewrite(stream, group, select, replay=True)
        reader = self._reader(stream, group)
        count = 0
        try:
            if await asyncio.to_thread(reader.open):
                await self._ensure_replay_topic(stream, group)
                while (batch := await asyncio.to_thread(reader.next_batch)) is not None:
                    await self.producer.send_many([replay_record(stream, group, m) for m in batch])
                    count += len(batch)
                    await asyncio.to_thread(reader.commit, reader.handed_out())
                await asyncio.to_thread(reader.commit, reader.reached())
        finally:
            await asyncio.to_thread(reader.close)
        return count

    async def purge_dead_letters(
        self, stream: str, group: str, select: Select | None = None
    ) -> int:
        """The replay group moves past the purged letters; with `select`, the others are
        appended again, batch by batch, each batch in one transaction."""
        return await self._rewrite(stream, group, select, replay=False)

    async def _ensure_replay_topic(self, stream: str, group: str) -> None:
        replay = replay_topic(stream, group)
        if replay not in self.topics.known:
            await self._ensure_side_topics(
                stream, {replay: self.settings.dlq_partitions}, dlq_topic(stream, group)
            )

    async def _rewrite(
        self, stream: str, group: str, select: Select | None, *, replay: bool
    ) -> int:
        """Read every letter once; the selected ones are replayed (or dropped), the others
        kept (appended again); a batch with nothing to write just moves the group."""
        reader = self._reader(stream, group)
        writer: DeadLetterWriter | None = None
        taken = 0
        try:
            if not await asyncio.to_thread(reader.open):
                return 0
            if replay:
                await self._ensure_replay_topic(stream, group)
            while (batch := await asyncio.to_thread(reader.next_batch)) is not None:
                records: list[Record | Kept] = []
                for message in batch:
                    if select is None or select(dead_letter_of(stream, group, message)):
                        taken += 1
                        if replay:
                            records.append(replay_record(stream, group, message))
                    else:
                        records.append(kept_record(message))
                offsets = reader.handed_out()
                if not records:
                    await asyncio.to_thread(reader.commit, offsets)
                    continue
                if writer is None:
                    writer = DeadLetterWriter(self.configs, stream, group)
                    await asyncio.to_thread(writer.open)
                await asyncio.to_thread(writer.settle, records, offsets, reader)
            await asyncio.to_thread(reader.commit, reader.reached())
        finally:
            if writer is not None:
                await asyncio.to_thread(writer.close)
            await asyncio.to_thread(reader.close)
        return taken


class KafkaSubscription:
    """The `Consumer` handed to the kernel for one subscription; closing it also detaches
    its `KafkaConsumer` from the broker."""

    def __init__(self, broker: KafkaBroker, consumer: KafkaConsumer) -> None:
        self._broker = broker
        self.consumer = consumer

    async def pause(self) -> None:
        await self.consumer.pause()

    def state(self) -> ConsumerState:
        return self.consumer.state()

    async def backlog(self) -> dict[str, int] | None:
        return await self.consumer.backlog()

    async def close(self) -> None:
        self._broker._forget(self.consumer)
        await self.consumer.close()
